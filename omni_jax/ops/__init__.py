"""Pure array functions (no Flax): the maths every model module calls."""
