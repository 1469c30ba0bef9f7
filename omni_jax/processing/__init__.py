"""Host-side preprocessing: tokenizer + chat template, log-mel features, images and video."""
