"""Generation: sampling, the Thinker's prefill/decode engine, the Talker's speech loop."""
