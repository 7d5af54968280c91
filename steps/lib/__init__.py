"""What two or more steps share, one module per concern; never imports an entry module (steps/<step>.py)."""
