"""Parts added to simlab from outside its package, as a user's own package would add them."""

__all__: list[str] = []
