"""One module per pipeline stage, each with a thin `main()` that dvc.yaml runs as
`python -m nanomorph.stages.<stage>`."""
