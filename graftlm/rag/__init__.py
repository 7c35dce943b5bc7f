"""Retrieval for RAG: knowledge bases, chunking, embeddings, keyword/dense/hybrid search, ranking, metrics."""

from graftlm.rag.backend import KnowledgeBase
from graftlm.rag.chunking import Chunk, chunk_text
from graftlm.rag.embeddings import embed, openai_embeddings, register_model
from graftlm.rag.fusion import rrf
from graftlm.rag.kb import (MODES, close_stores, create_kb, delete_document, delete_kb, describe_kb, get_kb,
                            ingest_documents, ingest_files, list_documents, list_kbs, open_store, search)
from graftlm.rag.rank import llm_yes_no_scorer, register_cross_encoder, set_default_ranker

__all__ = ["MODES", "Chunk", "KnowledgeBase", "chunk_text", "close_stores", "create_kb", "delete_document",
           "delete_kb", "describe_kb", "embed", "get_kb", "ingest_documents", "ingest_files", "list_documents", "list_kbs",
           "llm_yes_no_scorer", "open_store", "openai_embeddings", "register_cross_encoder", "register_model",
           "rrf", "search", "set_default_ranker"]
