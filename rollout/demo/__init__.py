"""The demo: a sample registry built from real npm download counts, and the story that
plays the reference plan over it day by day."""
