"""Model -> plan -> C -> object: the planner, the Jinja renderer and the clang cache."""
