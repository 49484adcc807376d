"""One module per ``sam3-stream`` command: each adds its parser (``register``) and runs it."""
