// MemBrane graph schema, version 2: full-text indexes for `membrane search`.
// Every statement must be safe to run twice (IF NOT EXISTS).
//
// The analyzer keeps every word (no stop words, no stemming, lower case), and
// the indexes are updated inside the writing transaction, so a capture is
// searchable as soon as its projection commits.

// Entities by their display name and every surface form (a list property).
CREATE FULLTEXT INDEX entity_names IF NOT EXISTS
FOR (e:Entity) ON EACH [e.name, e.aliases]
OPTIONS {indexConfig: {`fulltext.analyzer`: 'standard-no-stop-words', `fulltext.eventually_consistent`: false}};

// Captures by their title and text (stored when graph.store_text is on).
CREATE FULLTEXT INDEX capture_text IF NOT EXISTS
FOR (c:Capture) ON EACH [c.title, c.text]
OPTIONS {indexConfig: {`fulltext.analyzer`: 'standard-no-stop-words', `fulltext.eventually_consistent`: false}};
