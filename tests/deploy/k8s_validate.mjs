// Validates Kubernetes objects against the Kubernetes OpenAPI schemas, with the npm package
// kubernetes-models (its per-kind classes' validate(): types, required fields, enums).
// Usage: node k8s_validate.mjs NODE_MODULES_DIR OBJECTS.json
//   OBJECTS.json: [{"file": "deploy/k8s/worker.yaml", "doc": {apiVersion, kind, ...}}, ...]
// Prints one line per object; exit 0 when every object is valid, 1 with one line per invalid
// object ("FILE: KIND NAME: the schema's messages"), 2 on usage errors.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [nodeModules, objectsFile] = process.argv.slice(2);
if (!nodeModules || !objectsFile) {
  console.error("usage: node k8s_validate.mjs NODE_MODULES_DIR OBJECTS.json");
  process.exit(2);
}
const pkg = path.join(nodeModules, "kubernetes-models");
if (!fs.existsSync(path.join(pkg, "package.json"))) {
  console.error(`k8s_validate: no kubernetes-models package in ${nodeModules}`);
  process.exit(2);
}
const objects = JSON.parse(fs.readFileSync(objectsFile, "utf8"));
let bad = 0;
for (const { file, doc } of objects) {
  const where = `${file}: ${doc.kind} ${doc.metadata?.name ?? "(no name)"}`;
  // apiVersion "v1" -> v1/, "apps/v1" -> apps/v1/, "networking.k8s.io/v1" -> networking.k8s.io/v1/
  const group = path.join(pkg, ...String(doc.apiVersion ?? "").split("/"), "index.js");
  let cls;
  if (fs.existsSync(group)) cls = (await import(pathToFileURL(group).href))[doc.kind];
  if (typeof cls !== "function") {
    console.log(`${where}: INVALID: unknown apiVersion/kind ${doc.apiVersion}/${doc.kind}`);
    bad++;
    continue;
  }
  try {
    new cls(doc).validate();
    console.log(`${where}: valid (${doc.apiVersion})`);
  } catch (e) {
    console.log(`${where}: INVALID: ${String(e.message ?? e).replace(/\s+/g, " ")}`);
    bad++;
  }
}
console.log(`k8s_validate: ${objects.length - bad} of ${objects.length} objects valid`);
process.exit(bad ? 1 : 0);
