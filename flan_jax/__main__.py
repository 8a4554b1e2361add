"""`python -m flan_jax COMMAND ...`: the same as the `flan-jax` command."""

from flan_jax.cli import run

if __name__ == "__main__":
  run()
