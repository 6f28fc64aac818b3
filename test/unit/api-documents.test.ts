/**
 * The document generator's pieces: fastest-validator rules as JSON Schema, OpenAPI 3.0's schema
 * dialect as JSON Schema draft 7, and one declared action as an operation and a socket message.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { DeclaredAction } from "../../lib/api-declarations";
import { buildAsyncApi, buildOpenApi, paramsToSchema, ruleToSchema, toJsonSchema } from "../../lib/api-documents";
import { ok, schema } from "../../lib/api-schemas";

describe("api documents", () => {
	it("turns fastest-validator rules into JSON Schema", () => {
		assert.deepEqual(ruleToSchema({ type: "string", min: 1, max: 64, pattern: "^[a-z]+$" }), { type: "string", minLength: 1, maxLength: 64, pattern: "^[a-z]+$" });
		assert.deepEqual(ruleToSchema({ type: "string", pattern: /^\d+$/ }), { type: "string", pattern: "^\\d+$" }, "a RegExp gives its source");
		assert.deepEqual(ruleToSchema({ type: "number", integer: true, positive: true, convert: true }), { type: "integer", minimum: 1 });
		assert.deepEqual(ruleToSchema({ type: "array", max: 10, items: { type: "enum", values: ["a", "b"] }, unique: true }), {
			type: "array",
			maxItems: 10,
			uniqueItems: true,
			items: { type: "string", enum: ["a", "b"] },
		});
		assert.deepEqual(ruleToSchema([{ type: "equal", value: "all" }, { type: "boolean" }]), { oneOf: [{ enum: ["all"] }, { type: "boolean" }] });
		assert.deepEqual(ruleToSchema({ type: "string", nullable: true, default: null }), { type: "string", nullable: true, default: null });
	});

	it("makes optional what is optional or has a default, and strict objects closed", () => {
		const out = paramsToSchema({ $$strict: true, a: { type: "string" }, b: { type: "string", optional: true }, c: { type: "number", default: 3 } }, { a: "The a." });
		assert.deepEqual(out.required, ["a"]);
		assert.equal(out.additionalProperties, false);
		assert.equal((out.properties as Record<string, { description?: string }>).a.description, "The a.");
		assert.equal(paramsToSchema({ $$strict: "remove", x: { type: "boolean" } }).additionalProperties, undefined, "removed extras are not refused");
	});

	it("turns nullable and example into draft 7", () => {
		assert.deepEqual(toJsonSchema({ type: "string", nullable: true, example: "x" }), { type: ["string", "null"], examples: ["x"] });
		assert.deepEqual(toJsonSchema({ $ref: "#/components/schemas/User", nullable: true }), { oneOf: [{ $ref: "#/components/schemas/User" }, { type: "null" }] });
		assert.deepEqual(toJsonSchema({ type: "number", minimum: 0, exclusiveMinimum: true }), { type: "number", exclusiveMinimum: 0 });
	});

	const action: DeclaredAction = {
		name: "widgets.get",
		rest: "GET /widgets/:widgetId",
		socket: { namespace: "/chat", event: "widget:get" },
		member: "conversationId",
		params: { widgetId: { type: "string", max: 10 }, conversationId: { type: "string" }, verbose: { type: "boolean", optional: true } },
		openapi: { operationId: "getWidget", tag: "Messages", summary: "One widget", params: { verbose: "More detail." }, responses: { 200: ok("The widget.", schema("Message")) } },
	};

	it("makes an operation: path and query parameters, the shared answers, the action it calls", () => {
		const op = (buildOpenApi([action], {}).paths as Record<string, Record<string, Record<string, unknown>>>)["/widgets/{widgetId}"].get;
		assert.equal(op.operationId, "getWidget");
		const params = op.parameters as { name?: string; in?: string; required?: boolean; description?: string }[];
		assert.deepEqual(
			params.filter(p => p.name).map(p => [p.name, p.in, p.required]),
			[
				["widgetId", "path", true],
				["conversationId", "query", true],
				["verbose", "query", false],
			],
		);
		assert.equal(params.find(p => p.name === "verbose")?.description, "More detail.");
		assert.deepEqual(Object.keys(op.responses as object), ["200", "400", "401", "404", "429", "503"]);
		assert.deepEqual(op.security, [{ bearerAuth: [] }]);
		assert.equal(op["x-action"], "widgets.get");
	});

	it("refuses a route declared twice, and a route without docs", () => {
		assert.throws(() => buildOpenApi([action, { ...action, name: "widgets.other" }], {}), /declared twice/);
		assert.throws(() => buildOpenApi([{ ...action, openapi: undefined }], {}), /no openapi block/);
	});

	it("makes a socket message with its payload and its ack", () => {
		const doc = buildAsyncApi([action]) as { channels: Record<string, { messages: Record<string, { name: string; payload: Record<string, unknown> }> }>; operations: Record<string, unknown> };
		const message = doc.channels.chat.messages["widget.get"];
		assert.equal(message.name, "widget:get");
		assert.deepEqual(message.payload.required, ["widgetId", "conversationId"]);
		const ack = doc.channels.chat.messages["widget.get.ack"].payload as { oneOf: { properties: { data?: unknown } }[] };
		assert.deepEqual(ack.oneOf[0].properties.data, { $ref: "#/components/schemas/Message" });
		assert.ok(doc.operations["chat.widget.get"]);
		assert.ok(doc.channels.chat.messages["message.created.event"], "the server's events come from lib/socket-events.ts");
	});
});
