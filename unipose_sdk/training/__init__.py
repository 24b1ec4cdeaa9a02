"""Training loops for the small models embedded in the package (run as modules, e.g.
`python -m unipose_sdk.training.pose_tokenizer`)."""
