/**
 * How many subqueries SQLite will expand while it prepares a statement.
 *
 * SQLite copies a view's SELECT into the statement once per reference, and
 * a CTE's (NOT MATERIALIZED or not) once per reference too, recursively, BEFORE it
 * generates any code; and it does not look at sqlite3_interrupt() while it
 * does that. A chain of views (or CTEs) each referencing the previous one
 * twice doubles per level: 14 levels held a shard for 5.9 s against a 500 ms
 * deadline, and nothing could stop it. So the service counts the expansion
 * from the SQL text before SQLite prepares it, and refuses what expands past
 * MAX_EXPANSION:
 *
 * - a view, trigger or statement is costed by its references to views
 *   (each worth the view's own expansion) and to the CTEs of the statement
 *   (each worth the CTE's body);
 * - the count over-approximates (any identifier spelled like a view counts,
 *   scopes are ignored), so it may refuse a statement SQLite would have
 *   prepared quickly, never the reverse for these two constructs.
 */

/** Expanded subqueries one statement may need; a few hundred take tens of ms to prepare. */
export const MAX_EXPANSION = 256;

type Token = string;

/**
 * Lower-cased identifiers and keywords (quoted identifiers unquoted), and
 * the punctuation `(`, `)`, `,`, `;`. Strings, blobs, numbers, parameters
 * and comments are left out.
 */
export function tokens(sql: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  const n = sql.length;
  while (i < n) {
    const c = sql[i]!;
    if (c === '-' && sql[i + 1] === '-') {
      while (i < n && sql[i] !== '\n') i++;
    } else if (c === '/' && sql[i + 1] === '*') {
      const end = sql.indexOf('*/', i + 2);
      i = end < 0 ? n : end + 2;
    } else if (c === "'") {
      i++;
      while (i < n) {
        if (sql[i] === "'") {
          if (sql[i + 1] === "'") i += 2;
          else break;
        } else i++;
      }
      i++;
    } else if (c === '"' || c === '`' || c === '[') {
      const close = c === '[' ? ']' : c;
      let j = i + 1;
      let name = '';
      while (j < n) {
        if (sql[j] === close) {
          if (close !== ']' && sql[j + 1] === close) {
            name += close;
            j += 2;
            continue;
          }
          break;
        }
        name += sql[j];
        j++;
      }
      out.push(name.toLowerCase());
      i = j + 1;
    } else if (/[A-Za-z_\u0080-\uffff]/.test(c)) {
      let j = i + 1;
      while (j < n && /[A-Za-z0-9_$\u0080-\uffff]/.test(sql[j]!)) j++;
      out.push(sql.slice(i, j).toLowerCase());
      i = j;
    } else if (c === '(' || c === ')' || c === ',' || c === ';') {
      out.push(c);
      i++;
    } else {
      i++;
    }
  }
  return out;
}

/** The views of a schema: name (lower case) -> its CREATE VIEW text. */
export type Views = ReadonlyMap<string, string>;

/** Each view's expansion: 1 for itself plus what its references expand to. */
export function viewExpansions(views: Views): Map<string, number> {
  const cost = new Map<string, number>();
  const visiting = new Set<string>();
  const of = (name: string): number => {
    const known = cost.get(name);
    if (known !== undefined) return known;
    // A cycle cannot be prepared anyway; count it as one.
    if (visiting.has(name)) return 1;
    visiting.add(name);
    const body = tokens(views.get(name)!);
    // Skip "CREATE VIEW name": the view's own name is not a reference.
    const start = body.indexOf('as');
    const total = 1 + textExpansion(body.slice(start < 0 ? 0 : start), views, of);
    visiting.delete(name);
    cost.set(name, Math.min(total, Number.MAX_SAFE_INTEGER));
    return cost.get(name)!;
  };
  for (const name of views.keys()) of(name);
  return cost;
}

/** What a statement's (or trigger's) text expands to, given the views' expansions. */
export function statementExpansion(sql: string, views: Views, viewCost: ReadonlyMap<string, number>): number {
  return textExpansion(tokens(sql), views, (name) => viewCost.get(name) ?? 1);
}

function textExpansion(toks: Token[], views: Views, viewCost: (name: string) => number): number {
  // CTEs: name [ (columns) ] AS [ [NOT] MATERIALIZED ] ( body ). Every one
  // counts as inlined at each reference: SQLite 3.53 took over a minute to
  // prepare an 18-deep chain of plain CTEs too.
  const inlined = new Map<string, number>();
  const bodies: [string, number, number][] = [];
  for (let i = 0; i + 1 < toks.length; i++) {
    if (toks[i] !== 'as') continue;
    let open = i + 1;
    if (toks[open] === 'not') open++;
    if (toks[open] === 'materialized') open++;
    if (toks[open] !== '(') continue;
    let nameAt = i - 1;
    if (toks[nameAt] === ')') {
      let depth = 0;
      for (; nameAt >= 0; nameAt--) {
        if (toks[nameAt] === ')') depth++;
        else if (toks[nameAt] === '(' && --depth === 0) break;
      }
      nameAt--;
    }
    const name = toks[nameAt];
    if (name === undefined) continue;
    let depth = 0;
    let end = open;
    for (; end < toks.length; end++) {
      if (toks[end] === '(') depth++;
      else if (toks[end] === ')' && --depth === 0) break;
    }
    bodies.push([name, open + 1, end]);
    i = open;
  }
  const refCost = (name: string): number => inlined.get(name) ?? (views.has(name) ? viewCost(name) : 0);
  const sum = (from: number, to: number): number => {
    let total = 0;
    for (let k = from; k < to; k++) total = Math.min(total + refCost(toks[k]!), Number.MAX_SAFE_INTEGER);
    return total;
  };
  // In order of definition: a CTE can only reference those defined before it.
  for (const [name, from, to] of bodies) inlined.set(name, 1 + sum(from, to));
  // The statement's references to the inlined CTEs are everywhere but in their own definitions.
  let total = 0;
  let k = 0;
  for (const [, from, to] of bodies) {
    total += sum(k, from);
    k = to;
  }
  return Math.min(total + sum(k, toks.length), Number.MAX_SAFE_INTEGER);
}
