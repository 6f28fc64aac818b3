/**
 * Every HTTP answer and every socket ack and event the integration tests see is checked against
 * the committed API documents (docs/api/openapi.json, docs/api/asyncapi.json), which
 * test/integration/api-documents.test.ts keeps equal to what the gateway generates. A route or
 * event whose answer drifts from its declaration fails the test that met it.
 *
 * Not checked: answers of paths the document does not have (the web client's files, deliberate
 * 404s of made-up routes) and non-JSON bodies (file downloads).
 */
import fs from "node:fs";
import { after } from "node:test";
import Ajv, { type ValidateFunction } from "ajv";
import addFormats from "ajv-formats";
import { API_SNAPSHOTS, toJsonSchema } from "../../lib/api-documents";

type Obj = Record<string, any>;

export const OPENAPI_SNAPSHOT = API_SNAPSHOTS.openapi;
export const ASYNCAPI_SNAPSHOT = API_SNAPSHOTS.asyncapi;

const readJson = (file: string): Obj | null => (fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, "utf8")) : null);

/** `#/components/…` of a document, as a reference into the schema registered under `id`. */
function rebase(schema: unknown, id: string): unknown {
	if (Array.isArray(schema)) return schema.map(s => rebase(s, id));
	if (!schema || typeof schema !== "object") return schema;
	return Object.fromEntries(Object.entries(schema).map(([k, v]) => [k, k === "$ref" && typeof v === "string" && v.startsWith("#/") ? `${id}${v}` : rebase(v, id)]));
}

let ajv: Ajv | null = null;
let openapi: Obj | null = null;
let asyncapi: Obj | null = null;

function setup() {
	if (ajv) return;
	ajv = new Ajv({ strict: false, allErrors: true });
	addFormats(ajv);
	openapi = readJson(OPENAPI_SNAPSHOT);
	asyncapi = readJson(ASYNCAPI_SNAPSHOT);
	if (openapi) ajv.addSchema({ $id: "openapi", components: rebase(toJsonSchema(openapi.components), "openapi") as Obj });
	if (asyncapi) ajv.addSchema({ $id: "asyncapi", components: rebase(asyncapi.components, "asyncapi") as Obj });
}

const compiled = new Map<string, ValidateFunction>();
function validator(key: string, schema: unknown, docId: "openapi" | "asyncapi"): ValidateFunction {
	let fn = compiled.get(key);
	if (!fn) {
		const converted = docId === "openapi" ? toJsonSchema(schema) : schema;
		fn = ajv!.compile(rebase(converted, docId) as Obj);
		compiled.set(key, fn);
	}
	return fn;
}

const violations: string[] = [];
function violation(message: string): Error {
	violations.push(message);
	return new Error(`API contract: ${message}`);
}

// A check that failed inside a socket listener cannot fail the test itself: the file fails here.
after(() => {
	if (violations.length > 0) throw new Error(`API contract violations:\n${[...new Set(violations)].join("\n")}`);
});

// ---- HTTP ----

const pathMatchers = new Map<string, RegExp>();
function operationOf(method: string, urlPath: string): { template: string; operation: Obj } | null {
	const paths = openapi?.paths as Record<string, Obj> | undefined;
	if (!paths) return null;
	const pathname = decodeURI(urlPath.split("?")[0].replace(/\/+$/, "") || "/");
	let best: { template: string; operation: Obj; params: number } | null = null;
	for (const [template, ops] of Object.entries(paths)) {
		const operation = ops[method.toLowerCase()];
		if (!operation) continue;
		let re = pathMatchers.get(template);
		if (!re) {
			re = new RegExp(`^${template.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{[^}]+\}/g, "[^/]+")}$`);
			pathMatchers.set(template, re);
		}
		if (!re.test(pathname)) continue;
		// A literal path wins over a template (/users/me over /users/{id}).
		const params = (template.match(/\{/g) ?? []).length;
		if (!best || params < best.params) best = { template, operation, params };
	}
	return best;
}

function resolveResponse(response: Obj): Obj {
	if (response?.$ref) return resolveResponse(response.$ref.replace(/^#\//, "").split("/").reduce((node: Obj, key: string) => node?.[key], openapi!));
	return response;
}

/** Throws (and fails the test) if this answer is not one the document gives for the route. */
export function checkHttpAnswer(method: string, urlPath: string, status: number, contentType: string | null, body: unknown, requestHeaders: Record<string, string> = {}): void {
	setup();
	// A foreign Origin is refused (403) on every route alike, before any route runs: the document
	// says so once, in its CORS section, not on each operation.
	if (status === 403 && requestHeaders.origin) return;
	const found = operationOf(method, urlPath);
	if (!found) return;
	const { template, operation } = found;
	const where = `${method} ${template} → ${status}`;
	const response = operation.responses?.[String(status)] ?? operation.responses?.default;
	if (!response) throw violation(`${where}: status not documented (documented: ${Object.keys(operation.responses ?? {}).join(", ")})`);
	const content = resolveResponse(response).content as Obj | undefined;
	if (!content) {
		if (body !== null && body !== "" && status !== 304) throw violation(`${where}: a body where the document says none`);
		return;
	}
	if (!contentType?.includes("application/json")) return;
	const schema = content["application/json"]?.schema;
	if (!schema) return;
	const validate = validator(`${operation.operationId} ${status}`, schema, "openapi");
	if (!validate(body)) throw violation(`${where}: ${ajv!.errorsText(validate.errors)} in ${JSON.stringify(body).slice(0, 300)}`);
}

// ---- Socket.IO ----

const channelOf = (nsp: string) => (nsp === "/notifications" ? "notifications" : "chat");

function messageSchema(nsp: string, key: string): unknown | undefined {
	return (asyncapi?.channels as Obj | undefined)?.[channelOf(nsp)]?.messages?.[key]?.payload;
}

/** The ack of a client event must be the reply the document gives for it. */
export function checkSocketAck(nsp: string, event: string, ack: unknown): void {
	setup();
	if (!asyncapi) return;
	const key = `${event.replace(/:/g, ".")}.ack`;
	const schema = messageSchema(nsp, key);
	// An event the namespace does not have: the gateway answers NOT_FOUND, which is checked elsewhere.
	if (schema === undefined) return;
	const validate = validator(`${nsp} ${key}`, schema, "asyncapi");
	if (!validate(ack)) throw violation(`${nsp} ${event} ack: ${ajv!.errorsText(validate.errors)} in ${JSON.stringify(ack).slice(0, 300)}`);
}

/** An event from the server must be one the document lists for the namespace, with its payload. */
export function checkServerEvent(nsp: string, event: string, payload: unknown): Error | null {
	setup();
	if (!asyncapi) return null;
	const key = `${event.replace(/:/g, ".")}.event`;
	const schema = messageSchema(nsp, key);
	if (schema === undefined) return violation(`${nsp} ${event}: an event the document does not list`);
	const validate = validator(`${nsp} ${key}`, schema, "asyncapi");
	if (!validate(payload)) return violation(`${nsp} ${event}: ${ajv!.errorsText(validate.errors)} in ${JSON.stringify(payload).slice(0, 300)}`);
	return null;
}
