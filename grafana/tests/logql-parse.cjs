// Parses LogQL expressions with Grafana's own LogQL grammar (@grafana/lezer-logql, the
// parser of Grafana's Loki query editor) and reports, per expression, what the dashboard
// tests check (consumers/mimir/tests/dashboards.rs):
//
//   errors     the error nodes (⚠) lezer put into the tree: where and what text
//   selectors  every stream selector's matchers: {label, op, value}
//   parsers    every parser stage: {kind: json|logfmt|regexp|pattern|unpack, params:
//              [{label, path}]} (`| json a="dns.qname"` has params)
//   refs       every label name the pipeline reads: label filters, unwrap, by/without,
//              line_format templates ({{.name}}), label_format sources, keep/drop
//   produced   label names the pipeline makes (label_format targets, json/logfmt params)
//
// Usage: node grafana/tests/logql-parse.cjs NODE_MODULES_DIR < expressions.json
// (a JSON array of strings); prints a JSON array of the reports, in order. Exit 2 when
// the grammar is not installed (scripts/install-test-deps.sh installs it).
'use strict';

const path = require('path');
const { createRequire } = require('module');

const nodeModules = process.argv[2];
if (!nodeModules) {
  console.error('usage: logql-parse.cjs NODE_MODULES_DIR < expressions.json');
  process.exit(2);
}
let parser;
try {
  // Resolve from NODE_MODULES_DIR/.. so the packages there are found.
  const req = createRequire(path.join(path.resolve(nodeModules), '..', 'logql-parse.cjs'));
  ({ parser } = req('@grafana/lezer-logql'));
} catch (e) {
  console.error(`@grafana/lezer-logql not found in ${nodeModules}: run scripts/install-test-deps.sh (${e.message})`);
  process.exit(2);
}

// The value of a String node: "..." (Go-style escapes, which JSON covers for the cases
// dashboards use) or `...` (raw).
function unquote(s) {
  if (s.startsWith('`')) return s.slice(1, -1);
  try {
    return JSON.parse(s);
  } catch (_) {
    return s.slice(1, -1);
  }
}

function report(expr) {
  const tree = parser.parse(expr);
  const text = (n) => expr.slice(n.from, n.to);
  const out = { errors: [], selectors: [], parsers: [], refs: [], produced: [] };
  const children = (node, name) => {
    const found = [];
    for (let c = node.firstChild; c; c = c.nextSibling) if (!name || c.name === name) found.push(c);
    return found;
  };
  tree.iterate({
    enter(ref) {
      const n = ref.node;
      if (n.type.isError) {
        out.errors.push({ from: n.from, near: expr.slice(Math.max(0, n.from - 10), n.from + 10) });
        return;
      }
      switch (n.name) {
        case 'Selector': {
          const matchers = [];
          const walk = (m) => {
            for (const c of children(m)) {
              if (c.name === 'Matchers') walk(c);
              else if (c.name === 'Matcher') {
                const [id, op, val] = children(c);
                matchers.push({
                  label: id ? text(id) : '',
                  op: op ? text(op) : '',
                  value: val ? unquote(text(val)) : '',
                });
              }
            }
          };
          walk(n);
          out.selectors.push(matchers);
          return false;
        }
        case 'LabelParser': {
          out.parsers.push({ kind: text(n).split(/\s+/)[0], params: [] });
          return false;
        }
        case 'JsonExpressionParser':
        case 'LogfmtExpressionParser': {
          const params = [];
          const walk = (m) => {
            for (const c of children(m)) {
              if (c.name === 'LabelExtractionExpressionList') walk(c);
              else if (c.name === 'LabelExtractionExpression') {
                const id = children(c, 'Identifier')[0];
                const val = children(c, 'String')[0];
                const label = id ? text(id) : '';
                params.push({ label, path: val ? unquote(text(val)) : label });
                out.produced.push(label);
              }
            }
          };
          walk(n);
          out.parsers.push({ kind: n.name === 'JsonExpressionParser' ? 'json' : 'logfmt', params });
          return false;
        }
        case 'LabelFilter':
        case 'NumberFilter':
        case 'DurationFilter':
        case 'BytesFilter':
        case 'IpLabelFilter':
        case 'UnitFilter':
        case 'Matcher': {
          // Outside a selector (selectors return false above): a label filter.
          const id = children(n, 'Identifier')[0];
          if (id) out.refs.push({ label: text(id), where: 'filter' });
          return undefined;
        }
        case 'UnwrapExpr': {
          const id = children(n, 'Identifier')[0];
          if (id) out.refs.push({ label: text(id), where: 'unwrap' });
          return undefined;
        }
        case 'Grouping': {
          // Labels nest (Labels -> Labels, Identifier): every Identifier below.
          const walk = (m) => {
            for (const c of children(m)) {
              if (c.name === 'Identifier') out.refs.push({ label: text(c), where: 'grouping' });
              else walk(c);
            }
          };
          walk(n);
          return false;
        }
        case 'LineFormatExpr': {
          const s = children(n, 'String')[0];
          if (s) {
            for (const m of unquote(text(s)).matchAll(/\{\{[^}]*?\.([A-Za-z_][A-Za-z0-9_]*)[^}]*\}\}/g)) {
              out.refs.push({ label: m[1], where: 'line_format' });
            }
          }
          return false;
        }
        case 'LabelFormatMatcher': {
          const [target, source] = children(n);
          if (target) out.produced.push(text(target));
          if (source && source.name === 'Identifier') out.refs.push({ label: text(source), where: 'label_format' });
          return false;
        }
        case 'KeepLabel':
        case 'DropLabel': {
          const id = children(n, 'Identifier')[0];
          if (id) out.refs.push({ label: text(id), where: n.name === 'KeepLabel' ? 'keep' : 'drop' });
          return false;
        }
        default:
          return undefined;
      }
    },
  });
  return out;
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => {
  input += d;
});
process.stdin.on('end', () => {
  let exprs;
  try {
    exprs = JSON.parse(input);
  } catch (e) {
    console.error(`stdin is not a JSON array of strings: ${e.message}`);
    process.exit(2);
  }
  if (!Array.isArray(exprs) || !exprs.every((e) => typeof e === 'string')) {
    console.error('stdin is not a JSON array of strings');
    process.exit(2);
  }
  process.stdout.write(JSON.stringify(exprs.map(report)) + '\n');
});
