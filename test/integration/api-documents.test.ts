/**
 * The API documents the gateway generates from the actions' declarations: both are valid (the
 * OpenAPI 3.0 and AsyncAPI 3.0 JSON schemas), they describe every route and event of the contract,
 * and they equal the committed snapshots in docs/api/, so a change to the API shows in review.
 *
 * After an intended change: `npm run docs:api` writes the snapshots anew.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Validator } from "@seriousme/openapi-schema-validator";
import Ajv from "ajv";
import addFormats from "ajv-formats";
import { ASYNCAPI_SNAPSHOT, OPENAPI_SNAPSHOT } from "../helpers/api-contract";
import { http, startBroker, tempDir, type RunningSystem } from "../helpers/system";

const UPDATE = process.env.UPDATE_API_DOCS === "1";

/**
 * The contract's REST routes (v1, and v1.1's safety changes, reactions and pins), and the extras this server had
 * when this list was made. A route added since needs no entry here: the snapshot shows it.
 */
const CONTRACT_ROUTES = [
	"POST /auth/register", "POST /auth/login", "POST /auth/refresh", "POST /auth/logout",
	"GET /users/me", "GET /users/search", "POST /users/batch", "POST /users/change-password", "POST /users/upload-avatar",
	"GET /users", "GET /users/{id}", "PUT /users/{id}", "PATCH /users/{id}", "DELETE /users/{id}", "PUT /users/{id}/roles", "GET /roles",
	"GET /blocks",
	"POST /upload/single", "POST /upload/multiple", "POST /upload/file-base64", "DELETE /upload", "GET /files/{fileId}",
	"GET /conversations", "GET /conversations/requests", "GET /conversations/settings", "POST /conversations",
	"GET /conversations/{conversationId}", "PATCH /conversations/{conversationId}", "DELETE /conversations/{conversationId}",
	"POST /conversations/{conversationId}/accept", "POST /conversations/{conversationId}/decline", "POST /conversations/{conversationId}/mute",
	"POST /conversations/{conversationId}/pin", "POST /conversations/{conversationId}/hide", "POST /conversations/{conversationId}/read",
	"GET /conversations/{conversationId}/nicknames", "POST /conversations/{conversationId}/nicknames",
	"GET /conversations/{conversationId}/messages", "POST /conversations/{conversationId}/messages", "DELETE /conversations/{conversationId}/messages",
	"GET /notifications", "GET /notifications/unread/count", "PATCH /notifications/read-all", "POST /notifications/broadcast",
	"GET /notifications/{notificationId}", "POST /notifications/{notificationId}/read", "PATCH /notifications/{notificationId}/read", "DELETE /notifications/{notificationId}",
	"GET /health", "GET /docs", "GET /docs/init.js", "GET /docs/openapi.json", "GET /docs/asyncapi.json", "GET /docs/asyncapi",
	// v1.1: reactions, pins
	"POST /messages/{messageId}/reactions", "DELETE /messages/{messageId}/reactions/{emoji}",
	"POST /messages/{messageId}/pin", "DELETE /messages/{messageId}/pin", "GET /conversations/{conversationId}/pins",
];

const CONTRACT_EVENTS = {
	chat: {
		in: [
			"conversation:create", "conversation:list", "conversation:get", "conversation:join", "conversation:leave", "conversation:accept",
			"conversation:decline", "conversation:add-member", "conversation:remove-member", "conversation:promote-moderator",
			"conversation:demote-moderator", "conversation:update", "conversation:update-avatar", "conversation:delete", "conversation:mark-read",
			"message:send", "message:edit", "message:delete", "message:read", "message:delivered", "message:list", "message:search",
			"typing", "user:block", "user:unblock", "auth:refresh",
			// v1.1
			"message:react", "message:unreact", "message:pin", "message:unpin", "conversation:pins", "presence:subscribe", "presence:unsubscribe",
		],
		out: [
			"message:created", "message:updated", "message:deleted", "message:read", "message:status", "conversation:created", "conversation:invited",
			"conversation:updated", "conversation:deleted", "members:added", "members:removed", "conversation:member-added", "conversation:member-removed",
			"conversation:moderator-updated", "request:accepted", "request:declined", "typing", "user:blocked", "user:unblocked", "session:ended",
			// v1.1
			"message:reactions", "message:pinned", "message:unpinned", "presence:changed",
		],
	},
	notifications: {
		in: ["notification:list", "notification:get", "notification:read", "notification:delete", "notification:read-all", "notification:ping", "auth:refresh"],
		out: ["notification:created", "notification:read", "notification:deleted", "notification:count", "pong", "session:ended"],
	},
};

describe("API documents", () => {
	let sys: RunningSystem;
	let openapi: Record<string, any>;
	let asyncapi: Record<string, any>;

	before(async () => {
		process.env.JWT_SECRET = "api-documents-test-secret-0123456789";
		process.env.DATA_DIR = tempDir();
		delete process.env.DATABASE_URL;
		sys = await startBroker(["api", "users", "conversations", "messages", "notifications", "files"]);
		openapi = (await http(sys.baseUrl, "GET", "/docs/openapi.json")).body;
		asyncapi = (await http(sys.baseUrl, "GET", "/docs/asyncapi.json")).body;
		if (UPDATE) {
			fs.mkdirSync(path.dirname(OPENAPI_SNAPSHOT), { recursive: true });
			fs.writeFileSync(OPENAPI_SNAPSHOT, `${JSON.stringify(openapi, null, "\t")}\n`);
			fs.writeFileSync(ASYNCAPI_SNAPSHOT, `${JSON.stringify(asyncapi, null, "\t")}\n`);
		}
	});
	after(() => sys?.stop());

	it("the OpenAPI document is valid OpenAPI 3.0", async () => {
		const result = await new Validator().validate(openapi);
		assert.equal(result.valid, true, JSON.stringify(result.errors, null, 2)?.slice(0, 3000));
	});

	it("the AsyncAPI document is valid AsyncAPI 3.0", () => {
		const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: true });
		addFormats(ajv);
		const schema = JSON.parse(fs.readFileSync(require.resolve("@asyncapi/specs/schemas/3.0.0-without-$id.json"), "utf8"));
		const validate = ajv.compile(schema);
		assert.equal(validate(asyncapi), true, ajv.errorsText(validate.errors?.slice(0, 10)));
		// References the schema cannot check: every $ref must lead somewhere.
		const missing: string[] = [];
		const walk = (node: unknown) => {
			if (Array.isArray(node)) return node.forEach(walk);
			if (!node || typeof node !== "object") return;
			for (const [key, value] of Object.entries(node)) {
				if (key === "$ref" && typeof value === "string") {
					const target = value.replace(/^#\//, "").split("/").reduce((n: any, k) => n?.[k], asyncapi);
					if (target === undefined) missing.push(value);
				} else walk(value);
			}
		};
		walk(asyncapi);
		assert.deepEqual(missing, []);
	});

	it("describes every route of the contract, each with its own operationId", () => {
		const documented = Object.entries(openapi.paths as Record<string, Record<string, unknown>>).flatMap(([p, ops]) => Object.keys(ops).map(m => `${m.toUpperCase()} ${p}`));
		assert.deepEqual(CONTRACT_ROUTES.filter(r => !documented.includes(r)), [], "contract routes missing from the document");
		const ids = documented.map(r => {
			const [method, p] = r.split(" ");
			return openapi.paths[p][method.toLowerCase()].operationId;
		});
		assert.equal(new Set(ids).size, ids.length, "operationIds are unique");
	});

	it("describes every socket event of the contract, in both directions, with payload and ack", () => {
		for (const [channel, events] of Object.entries(CONTRACT_EVENTS)) {
			const messages = asyncapi.channels[channel].messages as Record<string, { name: string; payload: unknown }>;
			for (const event of events.in) {
				const key = event.replace(/:/g, ".");
				assert.ok(messages[key]?.payload, `${channel}: ${event} payload`);
				assert.ok(messages[`${key}.ack`]?.payload, `${channel}: ${event} ack`);
			}
			for (const event of events.out) assert.ok(messages[`${event.replace(/:/g, ".")}.event`]?.payload, `${channel}: server event ${event}`);
		}
	});

	it("equals the committed snapshots (run `npm run docs:api` after an intended change)", () => {
		assert.ok(fs.existsSync(OPENAPI_SNAPSHOT) && fs.existsSync(ASYNCAPI_SNAPSHOT), "docs/api/*.json are committed");
		assert.deepEqual(openapi, JSON.parse(fs.readFileSync(OPENAPI_SNAPSHOT, "utf8")), "docs/api/openapi.json is out of date");
		assert.deepEqual(asyncapi, JSON.parse(fs.readFileSync(ASYNCAPI_SNAPSHOT, "utf8")), "docs/api/asyncapi.json is out of date");
	});

	it("serves the AsyncAPI viewer beside Swagger UI, with nothing from elsewhere", async () => {
		const page = await fetch(`${sys.baseUrl}/docs/asyncapi`);
		assert.equal(page.status, 200);
		const html = await page.text();
		assert.match(html, /asyncapi-viewer\.js/);
		assert.doesNotMatch(html, /https?:\/\//, "no CDN");
		for (const asset of ["/docs/asyncapi-viewer.js", "/docs/asyncapi-viewer.css"]) {
			const res = await fetch(`${sys.baseUrl}${asset}`);
			assert.equal(res.status, 200, asset);
			assert.doesNotMatch(await res.text(), /https?:\/\/(?!localhost)/, `${asset} loads nothing from elsewhere`);
		}
	});
});
