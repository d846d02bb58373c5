// MemBrane: the most-connected entities
// :param limit => 10
// Entities by the number of facts (relationships to other entities) they take part in.
MATCH (entity:Entity)
WITH entity, COUNT { (entity)-[fact]-(:Entity) } AS facts
ORDER BY facts DESC, entity.key LIMIT $limit
RETURN entity, facts
