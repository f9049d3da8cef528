"""`edgepilot watch`: the live fleet view (state, feed thread, Textual screens)."""
