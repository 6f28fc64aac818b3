/**
 * The API documents, made from the actions' declarations (lib/api-declarations.ts) as the
 * service registry holds them, so they describe what the cluster runs:
 *
 * - OpenAPI 3.0 (/docs/openapi.json): one operation per `rest` route. Path, query and body
 *   parameters come from the action's `params` (fastest-validator rules turned into JSON Schema);
 *   summary, description and answers from its `openapi` block; the answers every route of its kind
 *   shares (400 for bad params, 401/429/503 with a token, 404 of a member check, 413 with a body)
 *   are added where the block does not say them. The gateway's own function routes (uploads, the
 *   docs pages) bring their operations themselves.
 * - AsyncAPI 3.0 (/docs/asyncapi.json): the namespaces /chat and /notifications as channels; each
 *   `socket` declaration is a message the server receives, with its payload (from `params`) and
 *   its ack as the reply; the server's own events come from lib/socket-events.ts.
 *
 * The entity schemas both use are in lib/api-schemas.ts.
 */
import fs from "node:fs";
import path from "node:path";
import { type DeclaredAction, type GatewayRoute, type HttpMethod, type RestDeclaration, type SocketDeclaration, needsUser, restRoutesOf } from "./api-declarations";
import { type Obj, errors, openApiFrame, ref, schemas } from "./api-schemas";
import { SERVER_EVENTS } from "./socket-events";

// ---- fastest-validator rules → JSON Schema (the OpenAPI 3.0 dialect) ----

type Rule = Record<string, unknown> | string | Rule[];

function patternSource(pattern: unknown): string | undefined {
	if (typeof pattern === "string") return pattern;
	if (pattern instanceof RegExp) return pattern.source;
	return undefined; // a RegExp that crossed the transporter as JSON arrives as {}
}

/** One rule as a schema; `optional` is the caller's business (it decides `required`). */
export function ruleToSchema(rule: Rule): Obj {
	if (Array.isArray(rule)) return { oneOf: rule.map(ruleToSchema) };
	if (typeof rule === "string") {
		const [type, ...flags] = rule.split("|");
		return ruleToSchema({ type, ...Object.fromEntries(flags.map(f => [f, true])) });
	}
	const out: Obj = {};
	switch (rule.type) {
		case "string": {
			out.type = "string";
			if (typeof rule.min === "number") out.minLength = rule.min;
			if (typeof rule.max === "number") out.maxLength = rule.max;
			if (typeof rule.length === "number") out.minLength = out.maxLength = rule.length;
			if (rule.empty === false && out.minLength === undefined) out.minLength = 1;
			const pattern = patternSource(rule.pattern);
			if (pattern) out.pattern = pattern;
			if (Array.isArray(rule.enum)) out.enum = rule.enum;
			if (rule.numeric) out.pattern ??= "^-?[0-9.]+$";
			break;
		}
		case "number": {
			out.type = rule.integer ? "integer" : "number";
			if (typeof rule.min === "number") out.minimum = rule.min;
			if (typeof rule.max === "number") out.maximum = rule.max;
			if (rule.positive && out.minimum === undefined) {
				if (rule.integer) out.minimum = 1;
				else Object.assign(out, { minimum: 0, exclusiveMinimum: true });
			}
			break;
		}
		case "boolean":
			out.type = "boolean";
			break;
		case "email":
			Object.assign(out, { type: "string", format: "email" });
			if (typeof rule.max === "number") out.maxLength = rule.max;
			break;
		case "date":
			Object.assign(out, { type: "string", format: "date-time" });
			break;
		case "enum":
			out.enum = rule.values;
			if (Array.isArray(rule.values) && rule.values.every(v => typeof v === "string")) out.type = "string";
			break;
		case "equal":
			out.enum = [rule.value];
			break;
		case "array": {
			out.type = "array";
			if (rule.items) out.items = ruleToSchema(rule.items as Rule);
			if (typeof rule.min === "number") out.minItems = rule.min;
			if (typeof rule.max === "number") out.maxItems = rule.max;
			if (rule.empty === false && out.minItems === undefined) out.minItems = 1;
			if (rule.unique) out.uniqueItems = true;
			break;
		}
		case "object": {
			const props = (rule.props ?? rule.properties) as Record<string, Rule> | undefined;
			Object.assign(out, props ? paramsToSchema(props) : { type: "object" });
			break;
		}
		case "multi":
			return { oneOf: (rule.rules as Rule[]).map(ruleToSchema), ...(rule.nullable ? { nullable: true } : {}) };
		case "any":
		default:
			break;
	}
	if (rule.nullable) out.nullable = true;
	if (rule.default !== undefined && typeof rule.default !== "function") out.default = rule.default;
	if (typeof rule.description === "string") out.description = rule.description;
	return out;
}

const isOptional = (rule: Rule) => !Array.isArray(rule) && (typeof rule === "string" ? /\|optional\b/.test(rule) : !!rule.optional || rule.default !== undefined);

/** A params object as an object schema (its `$$strict` decides additionalProperties). */
export function paramsToSchema(params: Record<string, unknown>, descriptions: Record<string, string> = {}): Obj {
	const properties: Obj = {};
	const required: string[] = [];
	for (const [name, rule] of Object.entries(params)) {
		if (name.startsWith("$$")) continue;
		const s = ruleToSchema(rule as Rule);
		if (descriptions[name]) s.description = descriptions[name];
		properties[name] = s;
		if (!isOptional(rule as Rule)) required.push(name);
	}
	const out: Obj = { type: "object", properties };
	if (required.length > 0) out.required = required;
	if (params.$$strict === true) out.additionalProperties = false;
	return out;
}

// ---- OpenAPI ----

const BODY_METHODS = new Set<HttpMethod>(["POST", "PUT", "PATCH", "DELETE"]);

function operationFor(action: DeclaredAction, method: HttpMethod, path: string, index: number): Obj {
	const doc = action.openapi;
	if (!doc) throw new Error(`${action.name} declares rest but no openapi block`);
	const params = action.params ?? {};
	const descriptions = doc.params ?? {};
	const pathNames = [...path.matchAll(/:(\w+)/g)].map(m => m[1]);
	const rest = Object.fromEntries(Object.entries(params).filter(([name]) => !pathNames.includes(name)));
	const parameters: Obj[] = [ref("parameters", "TraceId")];
	for (const name of pathNames) {
		const rule = params[name] as Rule | undefined;
		parameters.push({ name, in: "path", required: true, ...(descriptions[name] ? { description: descriptions[name] } : {}), schema: rule ? ruleToSchema(rule) : { type: "string" } });
	}
	const bodySchema = paramsToSchema(rest, descriptions);
	const hasFields = Object.keys(bodySchema.properties as Obj).length > 0;
	let requestBody: Obj | undefined = doc.requestBody;
	if (method === "GET" || (method === "DELETE" && !doc.requestBody && !hasFields)) {
		for (const [name, s] of Object.entries(bodySchema.properties as Record<string, Obj>)) {
			const { description, ...schemaOnly } = s;
			parameters.push({ name, in: "query", required: ((bodySchema.required as string[] | undefined) ?? []).includes(name), ...(description ? { description } : {}), schema: schemaOnly });
		}
	} else if (!requestBody && hasFields) {
		requestBody = { required: true, content: { "application/json": { schema: bodySchema } } };
	}
	parameters.push(...(doc.parameters ?? []));

	const user = needsUser(action);
	const shared: Obj = {
		...(Object.keys(params).some(n => !n.startsWith("$$")) ? errors(400) : {}),
		...(user ? errors(401, 429, 503) : errors(503)),
		...(action.gatewayRoute === "auth" ? errors(429) : {}),
		...(action.member ? { 404: ref("responses", "ConversationNotFound") } : {}),
		...(BODY_METHODS.has(method) && requestBody ? errors(413) : {}),
	};
	const responses = { ...shared, ...Object.fromEntries(Object.entries(doc.responses ?? {}).map(([k, v]) => [String(k), v])) };
	const ids = Array.isArray(doc.operationId) ? doc.operationId : doc.operationId ? [doc.operationId] : [];
	const operationId = ids[index] ?? `${action.name.replace(/\.(\w)/g, (_m, c: string) => c.toUpperCase())}${index > 0 ? method[0] + method.slice(1).toLowerCase() : ""}`;
	return {
		operationId,
		tags: [doc.tag],
		summary: doc.summary,
		...(doc.description ? { description: doc.description } : {}),
		security: user ? [{ bearerAuth: [] }] : [],
		parameters,
		...(requestBody ? { requestBody } : {}),
		responses: Object.fromEntries(Object.entries(responses).sort(([a], [b]) => a.localeCompare(b))),
		// Which action and gateway chain serve it: a gateway that has not met the service yet
		// still knows the route from the committed document (GatewayRoutesMixin).
		"x-action": action.name,
		...(action.gatewayRoute && action.gatewayRoute !== "rest" ? { "x-gateway-route": action.gatewayRoute } : {}),
	};
}

/** The OpenAPI document: the declared routes, and the gateway's own (function) routes. */
export function buildOpenApi(actions: DeclaredAction[], gatewayPaths: Record<string, Obj>): Obj {
	const paths: Record<string, Record<string, Obj>> = {};
	for (const [path, ops] of Object.entries(gatewayPaths)) paths[path] = { ...(ops as Record<string, Obj>) };
	for (const action of [...actions].sort((a, b) => a.name.localeCompare(b.name))) {
		restRoutesOf(action).forEach(({ method, path }, index) => {
			const key = path.replace(/:(\w+)/g, "{$1}");
			const at = (paths[key] ??= {});
			const verb = method.toLowerCase();
			if (at[verb]) throw new Error(`${method} ${path} is declared twice (${action.name} and ${String(at[verb]["x-action"])})`);
			at[verb] = operationFor(action, method, path, index);
		});
	}
	const sorted = Object.fromEntries(Object.entries(paths).sort(([a], [b]) => a.localeCompare(b)));
	return { ...openApiFrame, paths: sorted };
}

// ---- AsyncAPI ----

/** OpenAPI 3.0's schema dialect (nullable, example) → JSON Schema draft 7, which AsyncAPI uses. */
export function toJsonSchema(value: unknown): unknown {
	if (Array.isArray(value)) return value.map(toJsonSchema);
	if (!value || typeof value !== "object") return value;
	const src = value as Obj;
	const out: Obj = {};
	for (const [key, v] of Object.entries(src)) {
		if (key === "nullable" || key === "example") continue;
		if (key === "properties" || key === "patternProperties") {
			out[key] = Object.fromEntries(Object.entries(v as Obj).map(([k, s]) => [k, toJsonSchema(s)]));
		} else if (key === "exclusiveMinimum" && typeof v === "boolean") {
			if (v) out.exclusiveMinimum = src.minimum;
		} else if (key === "minimum" && src.exclusiveMinimum === true) {
			continue;
		} else out[key] = toJsonSchema(v);
	}
	if (src.example !== undefined) out.examples = [src.example];
	if (src.nullable === true) {
		if (typeof out.type === "string") out.type = [out.type, "null"];
		else if (out.$ref || out.oneOf || out.allOf || out.anyOf) return { oneOf: [out, { type: "null" }] };
		if (Array.isArray(out.enum)) out.enum = [...(out.enum as unknown[]), null];
	}
	return out;
}

/** A Socket.IO event name as an AsyncAPI key (keys allow letters, digits, `.`, `-`, `_`). */
const keyOf = (event: string) => event.replace(/:/g, ".");

const channelKeys = { "/chat": "chat", "/notifications": "notifications" } as const;

/** The success data of an action's ack: its declared ack, or its first 2xx answer's JSON body. */
function ackDataSchema(action: DeclaredAction): Obj | null {
	if (action.socket?.ack === "none") return null;
	if (action.openapi?.ack) return action.openapi.ack;
	for (const [status, response] of Object.entries(action.openapi?.responses ?? {})) {
		if (!status.startsWith("2")) continue;
		const content = (response as { content?: Record<string, { schema?: Obj }> }).content;
		const s = content?.["application/json"]?.schema;
		if (s) return s;
	}
	return {};
}

export function buildAsyncApi(actions: DeclaredAction[]): Obj {
	const channels: Record<string, { address: string; title: string; description: string; messages: Obj }> = {
		chat: {
			address: "/chat",
			title: "/chat",
			description: "Conversations, messages, typing, receipts, blocks. On connect the socket joins `user:<id>`; every event for the user goes there.",
			messages: {},
		},
		notifications: {
			address: "/notifications",
			title: "/notifications",
			description: "The user's notifications and their unread count; `notification:count` is sent on connect.",
			messages: {},
		},
	};
	const operations: Record<string, Obj> = {};
	const messageRef = (channel: string, key: string) => ({ $ref: `#/channels/${channel}/messages/${key}` });

	// auth:refresh is the gateway's own, on both namespaces.
	for (const channel of ["chat", "notifications"]) {
		channels[channel].messages["auth.refresh"] = {
			name: "auth:refresh",
			title: "auth:refresh",
			summary: "Extend the socket's life with a newer access token of the same user.",
			payload: { type: "object", required: ["token"], properties: { token: { type: "string" } } },
		};
		channels[channel].messages["auth.refresh.ack"] = {
			name: "ack",
			title: "auth:refresh ack",
			payload: ackSchema({ type: "object", required: ["expiresAt"], properties: { expiresAt: { type: "string", format: "date-time", description: "When the socket's new token expires (the socket is ended then)." } } }),
		};
		operations[`${channel}.auth.refresh`] = {
			action: "receive",
			channel: { $ref: `#/channels/${channel}` },
			summary: "Extend the socket's life (`auth:refresh`).",
			messages: [messageRef(channel, "auth.refresh")],
			reply: { channel: { $ref: `#/channels/${channel}` }, messages: [messageRef(channel, "auth.refresh.ack")] },
		};
	}

	for (const action of [...actions].sort((a, b) => (a.socket?.event ?? "").localeCompare(b.socket?.event ?? ""))) {
		const socket = action.socket;
		if (!socket) continue;
		const channel = channelKeys[socket.namespace];
		const key = keyOf(socket.event);
		if (channels[channel].messages[key]) throw new Error(`${socket.namespace} ${socket.event} is declared twice`);
		const doc = action.openapi;
		channels[channel].messages[key] = {
			name: socket.event,
			title: socket.event,
			summary: doc?.summary ?? socket.event,
			...(doc?.description ? { description: doc.description } : {}),
			payload: toJsonSchema(paramsToSchema(action.params ?? {}, doc?.params ?? {})),
			"x-action": action.name,
			"x-socket": socket,
		};
		const data = ackDataSchema(action);
		channels[channel].messages[`${key}.ack`] = { name: "ack", title: `${socket.event} ack`, payload: ackSchema(data ? (toJsonSchema(data) as Obj) : null) };
		operations[`${channel}.${key}`] = {
			action: "receive",
			channel: { $ref: `#/channels/${channel}` },
			summary: doc?.summary ?? socket.event,
			messages: [messageRef(channel, key)],
			reply: { channel: { $ref: `#/channels/${channel}` }, messages: [messageRef(channel, `${key}.ack`)] },
		};
	}

	for (const [namespace, events] of Object.entries(SERVER_EVENTS)) {
		const channel = channelKeys[namespace as keyof typeof channelKeys];
		for (const [event, doc] of Object.entries(events)) {
			const key = `${keyOf(event)}.event`;
			channels[channel].messages[key] = { name: event, title: event, summary: doc.summary, payload: toJsonSchema(doc.payload) };
			operations[`${channel}.${key}`] = { action: "send", channel: { $ref: `#/channels/${channel}` }, summary: doc.summary, messages: [messageRef(channel, key)] };
		}
	}

	return {
		asyncapi: "3.0.0",
		info: {
			title: "Parley real-time API",
			version: "1.0.0",
			description:
				"Socket.IO v4 on the gateway's origin (path `/socket.io`; the websocket transport alone works). Connect to a namespace with the access token: " +
				"`io(origin + \"/chat\", { auth: { token } })`; a socket without a valid token is refused at connect (`connect_error` \"Unauthorized\"). " +
				"Every client → server event takes an ack callback and always gets `{ ok: true, data? }` or `{ ok: false, error: { code, message, details? } }` " +
				"with the REST error codes; an event a namespace does not have is answered `NOT_FOUND`. The REST API is described at /docs/openapi.json.",
		},
		servers: { gateway: { host: "localhost:3000", protocol: "ws", pathname: "/socket.io", description: "This gateway (Socket.IO v4)." } },
		defaultContentType: "application/json",
		channels,
		operations,
		components: { schemas: toJsonSchema(schemas) },
	};
}

/** `{ ok: true, data }` (or `{ ok: true }` when there is no data), or `{ ok: false, error }`. */
function ackSchema(data: Obj | null): Obj {
	const success: Obj = {
		type: "object",
		required: data ? ["ok", "data"] : ["ok"],
		properties: { ok: { const: true }, ...(data ? { data } : {}) },
	};
	const failure: Obj = {
		type: "object",
		required: ["ok", "error"],
		properties: {
			ok: { const: false },
			error: {
				type: "object",
				required: ["code", "message"],
				properties: { code: { $ref: "#/components/schemas/Error/properties/code" }, message: { type: "string" }, details: {} },
			},
		},
	};
	return { oneOf: [success, failure] };
}

/** The actions of every service in the registry (available or not), with their declarations. */
export function registryActions(registry: { getServiceList(opts: object): unknown[] }): DeclaredAction[] {
	const services = registry.getServiceList({ withActions: true, onlyAvailable: false, skipInternal: true }) as { actions?: Record<string, DeclaredAction> }[];
	const byName = new Map<string, DeclaredAction>();
	for (const service of services) for (const action of Object.values(service.actions ?? {})) byName.set(action.name, action);
	return [...byName.values()];
}

/** The committed documents (`npm run docs:api` writes them; a test keeps them equal to the generated ones). */
export const API_SNAPSHOTS = {
	openapi: path.join(__dirname, "..", "docs", "api", "openapi.json"),
	asyncapi: path.join(__dirname, "..", "docs", "api", "asyncapi.json"),
};

/**
 * The routes and socket events of the committed documents, as declarations without docs: what a
 * gateway knows of services it has not met yet (their calls answer 503 until they come).
 */
export function documentedRoutes(): DeclaredAction[] {
	const byName = new Map<string, { name: string; rest: RestDeclaration[]; gatewayRoute?: GatewayRoute; socket?: SocketDeclaration }>();
	const entry = (name: string) => {
		let e = byName.get(name);
		if (!e) byName.set(name, (e = { name, rest: [] }));
		return e;
	};
	const read = (file: string) => (fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, "utf8")) as Obj) : null);
	const openapi = read(API_SNAPSHOTS.openapi);
	for (const [p, ops] of Object.entries((openapi?.paths ?? {}) as Record<string, Record<string, Obj>>)) {
		for (const [method, op] of Object.entries(ops)) {
			if (typeof op["x-action"] !== "string") continue;
			const e = entry(op["x-action"]);
			e.rest.push(`${method.toUpperCase() as HttpMethod} ${p.replace(/\{(\w+)\}/g, ":$1")}` as RestDeclaration);
			if (op["x-gateway-route"]) e.gatewayRoute = op["x-gateway-route"] as GatewayRoute;
		}
	}
	const asyncapi = read(API_SNAPSHOTS.asyncapi);
	for (const channel of Object.values((asyncapi?.channels ?? {}) as Record<string, { messages: Record<string, Obj> }>)) {
		for (const message of Object.values(channel.messages)) {
			if (typeof message["x-action"] === "string" && message["x-socket"]) entry(message["x-action"]).socket = message["x-socket"] as SocketDeclaration;
		}
	}
	return [...byName.values()].map(e => ({ ...e, rest: e.rest.length > 0 ? e.rest : undefined }));
}
