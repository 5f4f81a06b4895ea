"""``npdecode serve``: a retrieval server over an index dir (docs/serve.md).

``app.py`` the HTTP routes (FastAPI), ``batcher.py`` the dynamic batcher that decodes
concurrent requests together, ``engine.py`` a loaded retriever with its documents (swapped
whole after a live append), ``documents.py`` the index's corpus by doc id, ``metrics.py``
the Prometheus text, ``settings.py`` the server's knobs, ``cli.py`` the command.
"""
