"""hadahw.sim."""
