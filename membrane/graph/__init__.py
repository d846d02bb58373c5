"""The Neo4j projection of the journal, by concern:

- graph/cypher.py: all Cypher text (queries, the export script's statements,
  literals and relationship types placed in Cypher);
- graph/store.py: GraphStore, the driver and the one boundary for its errors;
  migrations, the batched upsert, retraction, reads;
- graph/rows.py: the parameters the store sends, built from merge's values;
- graph/questions.py: the saved questions (membrane/queries/*.cypher).

Nothing is imported here, so the Cypher text and the saved questions load
without the Neo4j driver.
"""
