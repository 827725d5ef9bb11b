"""Command-line applications; the library never imports this package."""
