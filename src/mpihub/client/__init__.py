"""The user's side: :class:`Client`, views and async results."""
