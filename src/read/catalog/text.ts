// How catalog text becomes words, once, in JavaScript, for both engines: lower case,
// compatibility-decomposed, diacritics dropped, then runs of letters and digits. Indexing
// and querying use the same function, so a shopper's "Crème" finds "creme", "ＨＥＡＤ"
// finds "head", and no character of a query can reach the engine's query syntax: a
// query is a list of words, quoted. No stemming and no stop words (as PostgreSQL's
// 'simple' configuration): every word is matched as a prefix, which stemming would break
// ("runn" is a prefix of "running" but not of its stem "run"), and product names are
// full of brands and model numbers no language's stemmer knows.
//
// One exception: a word of one character ("usb c charger", "a s") is matched whole, unless
// it ends the query. As a prefix it would match nearly every product (every
// word starting with "c") and cost a scan of the whole index, for nothing the shopper
// meant. At the end it stays a prefix: the first keystroke of the word being typed ("red k"
// finds the red kettle), and one such scan narrowed by the other words.

/** Words longer than this are cut (PostgreSQL refuses lexemes over 2 KB). */
const wordLengthMax = 100
/** The most different words a query may have (the query API refuses more): each one is a prefix scan. */
export const queryWordsMax = 16

/** The words of `text`, in order, duplicates kept. */
export function wordsOf(text: string): string[] {
  const found = fold(text).match(/[\p{L}\p{N}]+/gu)
  if (!found) return []
  return found.map((word) =>
    word.length > wordLengthMax ? [...word].slice(0, wordLengthMax).join('') : word,
  )
}

/** One word of a query: every product found has a word starting with it, or equal to it. */
export interface QueryTerm {
  word: string
  prefix: boolean
}

/** A query's different words, in order. */
export function distinctWordsOf(q: string | undefined): string[] {
  return [...new Set(wordsOf(q ?? ''))]
}

/** The words a query searches for: distinct, in order, the first `queryWordsMax` of them. */
export function queryTermsOf(q: string | undefined): QueryTerm[] {
  const words = distinctWordsOf(q).slice(0, queryWordsMax)
  const last = words.length - 1
  return words.map((word, i) => ({ word, prefix: i === last || [...word].length > 1 }))
}

/**
 * The text indexed for one field: its words, a space between. FTS5's 'ascii' tokenizer
 * splits it back into exactly these words (it splits on ASCII punctuation and spaces only,
 * and a word holds none), so the index and a query see the words of `wordsOf`.
 */
export function indexTextOf(text: string): string {
  return wordsOf(text).join(' ')
}

/** An FTS5 query: every word a quoted phrase (of one token), a prefix or whole, all of them required. */
export function ftsMatchOf(terms: QueryTerm[]): string {
  return terms.map(({ word, prefix }) => `"${word.replaceAll('"', '""')}"${prefix ? '*' : ''}`).join(' ')
}

/** Quotes a lexeme for the tsvector / tsquery input syntax. */
function lexeme(word: string): string {
  return `'${word.replaceAll('\\', '\\\\').replaceAll("'", "''")}'`
}

/** A PostgreSQL tsquery literal: every word a prefix (`:*`) or whole, all of them required. */
export function tsQueryOf(terms: QueryTerm[]): string {
  return terms.map(({ word, prefix }) => `${lexeme(word)}${prefix ? ':*' : ''}`).join(' & ')
}

/** PostgreSQL keeps positions up to this. */
const positionMax = 16_383

/**
 * A PostgreSQL tsvector literal of the fields' words, each field with its weight
 * (A ranks highest), positions running on across fields as to_tsvector's `||` does.
 * Cast with `::tsvector`: the words are exactly `wordsOf`'s, whatever the server's locale.
 */
export function tsVectorOf(fields: [text: string, weight: 'A' | 'B' | 'C' | 'D'][]): string {
  const parts: string[] = []
  let position = 0
  for (const [text, weight] of fields) {
    for (const word of wordsOf(text)) {
      position = Math.min(position + 1, positionMax)
      parts.push(`${lexeme(word)}:${position}${weight}`)
    }
  }
  return parts.join(' ')
}

/** Orders strings by code point, as SQLite's BINARY and PostgreSQL's "C" collation do. */
export function compareCodePoints(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b))
}

/** The key products sort on by name: case and diacritics do not count. */
export function nameKeyOf(name: string): string {
  return fold(name)
}

/**
 * Lower case without diacritics, compatibility forms decomposed ("ﬁ" → "fi", "Ｈ" → "h").
 * Lower-cased again after decomposing, as "𝐀" decomposes to "A".
 */
function fold(text: string): string {
  return text
    .toLowerCase()
    .normalize('NFKD')
    .replace(/\p{M}+/gu, '')
    .toLowerCase()
}
