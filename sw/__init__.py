"""hadahw.sw."""
