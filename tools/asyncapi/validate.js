// Validates an AsyncAPI document with the official parser (@asyncapi/parser,
// the one the AsyncAPI CLI and Studio use) and checks every message example
// against its payload and header schemas with Ajv, since the parser's v3
// ruleset does not. On success prints, as JSON on stdout, each message with
// its examples and its dereferenced schemas, so that
// contracts/tests/asyncapi.rs can hold them against the Rust decoders.
//
// Usage: node validate.js PATH/TO/asyncapi.yaml
// Exit status: 0 valid, 1 invalid (diagnostics on stderr), 2 usage or I/O.
'use strict';

const path = require('node:path');
const { Parser, fromFile, DiagnosticSeverity } = require('@asyncapi/parser');
const Ajv = require('ajv');

const SEVERITY = ['error', 'warning', 'information', 'hint'];

function where(diagnostic) {
  const at = diagnostic.path && diagnostic.path.length ? diagnostic.path.join('.') : '(document)';
  const line = diagnostic.range ? ` line ${diagnostic.range.start.line + 1}` : '';
  return `${at}${line}`;
}

async function main() {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: node validate.js ASYNCAPI_FILE');
    process.exit(2);
  }
  const parser = new Parser();
  const { document, diagnostics } = await fromFile(parser, path.resolve(file)).parse();

  let errors = 0;
  for (const d of diagnostics) {
    const severity = SEVERITY[d.severity] || String(d.severity);
    if (d.severity === DiagnosticSeverity.Error) errors += 1;
    console.error(`${severity}: [${d.code}] ${d.message} at ${where(d)}`);
  }
  if (errors > 0 || !document) {
    console.error(`${file}: ${errors} error(s); the document is not valid AsyncAPI`);
    process.exit(1);
  }

  // The payload schemas are AsyncAPI schemas: JSON Schema draft-07 plus a
  // few keywords Ajv must be told about.
  const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
  ajv.addKeyword('discriminator');

  // Channel messages are references to the components; name them by the
  // component's `name`, which this document sets to the component's key.
  const addresses = new Map();
  for (const channel of document.channels()) {
    for (const message of channel.messages()) {
      const list = addresses.get(message.name()) || [];
      list.push(channel.address());
      addresses.set(message.name(), list);
    }
  }

  const messages = [];
  const failures = [];
  for (const message of document.components().messages()) {
    const id = message.id();
    if (message.name() !== id) failures.push(`message ${id} must have name: ${id}`);
    const payload = message.payload() ? message.payload().json() : undefined;
    const headers = message.headers() ? message.headers().json() : undefined;
    const kafka = message.bindings().get('kafka');
    const key = kafka && kafka.value().key ? kafka.value().key : undefined;
    const channels = addresses.get(id) || [];
    if (channels.length === 0) failures.push(`message ${id} is on no channel`);
    const examples = message.examples().all().map((e) => ({
      name: e.name() || null,
      payload: e.hasPayload() ? e.payload() : null,
      headers: e.hasHeaders() ? e.headers() : null,
    }));
    if (examples.length === 0) failures.push(`message ${id} has no example`);
    const check = (schema, value, what, name) => {
      if (schema === undefined || value === null) return;
      const validate = ajv.compile(schema);
      if (!validate(value)) {
        failures.push(`message ${id}, example ${name}: ${what} does not match its schema: ${ajv.errorsText(validate.errors)}`);
      }
    };
    for (const example of examples) {
      if (example.payload === null) failures.push(`message ${id}, example ${example.name}: no payload`);
      check(payload, example.payload, 'payload', example.name);
      check(headers, example.headers, 'headers', example.name);
    }
    messages.push({ id, channels, payload, headers, key, examples });
  }
  if (failures.length > 0) {
    for (const f of failures) console.error(f);
    process.exit(1);
  }
  const schemas = {};
  for (const schema of document.components().schemas()) schemas[schema.id()] = schema.json();
  process.stdout.write(JSON.stringify({ messages, schemas }, null, 1));
  process.stdout.write('\n');
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(2);
});
