"""hadahw.rtl."""
