"""Click commands, one module per command group; registered in dustel.cli."""
