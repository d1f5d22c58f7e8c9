"""The Ray Serve application (``serve.app:app``) and its deploy config (``serve/config.yaml``)."""
