"""Export recipes shipped with the package (TOML): `igds-fast export --recipe NAME` finds one by its
file name without `.toml` from any working directory; a path names any other recipe. Keys are the
export options' names (`batch_size` or `batch-size`) and the step's fields; the options given on the
command line override them. Model paths in a recipe are relative to the working directory."""
