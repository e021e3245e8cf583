"""What the retriever service loads: a versioned FAISS index of the catalog and its blend weights.

build.py encodes the catalog with a model version and writes the index; store.py names, writes and
reads index directories; blend.py is the one definition of the final score; fit_blend.py fits its
weights from a point-in-time set of the `retriever_online` FeatureService.
"""
