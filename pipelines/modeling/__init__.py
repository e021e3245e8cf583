"""Models shared by training, signal producers and serving: the text encoder lives here once."""
