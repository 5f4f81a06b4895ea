"""Indexing: corpus -> identifiers -> CE -> clustering -> FAISS store + prefix tries (the index dir).

Modules, in pipeline order: ``config`` (IndexConfig), ``identifiers`` (step 1), ``extraction``
(step 2, Lightning predict loop over shards), ``clustering`` (step 3), ``assembly`` (segments),
``store`` (FAISS / torch CE store), ``generation`` (tries + stores of one generation),
``layout`` (index dir files, ``load_index``), ``manifest``, ``builder`` (``build_index``, resumable),
``appender`` (``append_to_index``), ``retriever`` (``np`` / ``genre`` retrievers), ``cli``,
``verify`` (``npdecode verify``: recorded sizes and digests of any artifact dir).
Nothing heavy is imported here.
"""
