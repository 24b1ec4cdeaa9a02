"""`unipose serve`: the SDK as an HTTP service on Ray Serve, with a web demo; `unipose_sdk.client.Client` calls it.

- `limits`: the service's settings and request limits (no Ray needed),
- `wire`: the JSON layout of inputs, results and errors (no Ray needed; the client uses it),
- `deployment`: `ModelServer`, one model batching concurrent requests into real model batches,
- `app`: the service deployment (the FastAPI ingress with the default model in the same replica; further models
  as deployments of their own), the application builder and the Serve config for `serve deploy`,
- `static/`: the web demo (HTML, CSS and the project's own canvas 3D view; no CDN, works offline).

Install the serving stack with `pip install "unipose-sdk[serve]"`.
"""
