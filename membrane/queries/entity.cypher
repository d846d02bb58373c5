// MemBrane: everything about an entity, with its sources
// :param key => 'nextcloud'
// Run the :param line above first (the entity's key, as `membrane show NAME`
// prints it), then this favourite. `membrane show NAME` runs the same query.
// One row: each capture node is sent once per list, not once per fact.
MATCH (e:Entity {key: $key})
CALL (e) {
  OPTIONAL MATCH (mentioned:Capture)-[:MENTIONS]->(e)
  RETURN collect(mentioned) AS mentioned_in
}
CALL (e) {
  OPTIONAL MATCH (e)-[fact]-(other:Entity)
  OPTIONAL MATCH (source:Capture) WHERE source.sha256 IN fact.sources
  WITH fact, other, collect(source) AS sources WHERE fact IS NOT NULL
  RETURN collect({fact: fact, other: other, sources: sources}) AS facts
}
RETURN e AS entity, mentioned_in, facts
