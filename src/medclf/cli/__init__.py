"""The command line (typer): each command builds its options, calls one library function and prints the result."""
