"""The built-in retrievers; each module registers its factory (``register_retriever``) on import."""
