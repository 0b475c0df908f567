//! Recall scoring shared by both backends: Okapi BM25 over the candidate
//! facts, importance and recency.

use den_core::Timestamp;

use super::{Fact, Recalled};

/// Weights of the recall score (after Generative Agents: recency 0.5,
/// relevance 3, importance 2).
const W_RECENCY: f64 = 0.5;
const W_RELEVANCE: f64 = 3.0;
const W_IMPORTANCE: f64 = 2.0;

/// Scores candidate facts for `query`: BM25 over the candidates (normalised
/// to the best), importance and recency; best first, at most `limit`.
pub(super) fn rank(corpus: Vec<Fact>, query: &str, limit: usize, now: Timestamp) -> Vec<Recalled> {
    let terms = query_terms(query);
    let relevance = bm25(&corpus, &terms);
    let best = relevance.iter().copied().fold(0.0_f64, f64::max);
    let mut scored: Vec<Recalled> = corpus
        .into_iter()
        .zip(relevance)
        .map(|(fact, relevance)| {
            let hours = ((now.0 - fact.updated.0).max(0) as f64) / 3_600_000.0;
            let recency = 0.995_f64.powf(hours);
            let relevance = if best > 0.0 { relevance / best } else { 0.0 };
            let score = W_RELEVANCE * relevance + W_IMPORTANCE * fact.importance + W_RECENCY * recency;
            Recalled { fact, score }
        })
        .collect();
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    scored.truncate(limit);
    scored
}

/// Words of `text` as scoring compares them: lowercase, stemmed.
fn words(text: &str, stemmer: &rust_stemmers::Stemmer) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(|w| stemmer.stem(&w.to_lowercase()).into_owned())
        .collect()
}

/// The distinct, stemmed content words of a query.
fn query_terms(query: &str) -> Vec<String> {
    let stemmer = rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English);
    let mut terms: Vec<String> = Vec::new();
    for w in query.split(|c: char| !c.is_alphanumeric()).map(str::to_lowercase) {
        if w.chars().count() >= 3 && !STOP.contains(&w.as_str()) {
            let t = stemmer.stem(&w).into_owned();
            if !terms.contains(&t) {
                terms.push(t);
            }
        }
        if terms.len() == 16 {
            break;
        }
    }
    terms
}

/// Okapi BM25 (k1 = 1.2, b = 0.75) of each fact for `terms`, with the
/// facts themselves as the corpus.
fn bm25(facts: &[Fact], terms: &[String]) -> Vec<f64> {
    if terms.is_empty() || facts.is_empty() {
        return vec![0.0; facts.len()];
    }
    let stemmer = rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English);
    let docs: Vec<Vec<String>> = facts.iter().map(|f| words(&f.text, &stemmer)).collect();
    let n = docs.len() as f64;
    let avgdl = (docs.iter().map(Vec::len).sum::<usize>() as f64 / n).max(1.0);
    let idf: Vec<f64> = terms
        .iter()
        .map(|t| {
            let df = docs.iter().filter(|d| d.contains(t)).count() as f64;
            (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
        })
        .collect();
    docs.iter()
        .map(|d| {
            let dl = d.len() as f64;
            terms
                .iter()
                .zip(&idf)
                .map(|(t, idf)| {
                    let tf = d.iter().filter(|w| *w == t).count() as f64;
                    idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * dl / avgdl))
                })
                .sum()
        })
        .collect()
}

/// Words too common to search for.
pub(super) const STOP: &[&str] = &[
    "the", "and", "for", "you", "your", "are", "was", "what", "that", "this", "with", "have", "has", "but", "not",
    "about", "does", "did", "can", "how", "who", "why", "when", "where", "they", "them", "his", "her", "she", "him",
    "our", "its", "just", "like", "from",
];
