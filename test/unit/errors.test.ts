import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errors } from "moleculer";
import { conflict, forbidden, invalidCredentials, isStoreOutage, notFound, rateLimited, toEnvelope, unauthorized, validationError } from "../../lib/errors";

describe("toEnvelope", () => {
	it("keeps the contract codes of our own errors", () => {
		assert.deepEqual(toEnvelope(invalidCredentials()), { statusCode: 400, code: "INVALID_CREDENTIALS", message: "Invalid credentials" });
		assert.equal(toEnvelope(unauthorized()).statusCode, 401);
		assert.equal(toEnvelope(forbidden()).statusCode, 403);
		assert.equal(toEnvelope(notFound("User")).message, "User not found");
		assert.deepEqual(toEnvelope(conflict("taken", [{ field: "email" }])).details, [{ field: "email" }]);
		assert.deepEqual(toEnvelope(validationError("bad", [{ field: "x" }])), { statusCode: 400, code: "VALIDATION_ERROR", message: "bad", details: [{ field: "x" }] });
		const limited = toEnvelope(rateLimited(2.2));
		assert.equal(limited.statusCode, 429);
		assert.equal(limited.retryAfter, 3);
	});

	it("maps Moleculer's validator errors to 400 and drops the rejected values", () => {
		const err = new Errors.ValidationError("Parameters validation error!", "VALIDATION_ERROR", [
			{ type: "stringMin", field: "password", message: "too short", actual: "hunter2", expected: 8 },
		]);
		const env = toEnvelope(err);
		assert.equal(env.statusCode, 400);
		assert.equal(env.code, "VALIDATION_ERROR");
		assert.deepEqual(env.details, [{ field: "password", type: "stringMin", message: "too short", expected: 8 }]);
		assert.ok(!JSON.stringify(env).includes("hunter2"));
	});

	it("turns a database outage into 503 with Retry-After, not 500", () => {
		const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { name: "SequelizeConnectionRefusedError" });
		const env = toEnvelope(refused);
		assert.equal(env.statusCode, 503);
		assert.equal(env.code, "SERVICE_UNAVAILABLE");
		assert.equal(env.retryAfter, 2);
		assert.ok(isStoreOutage(Object.assign(new Error("Connection terminated unexpectedly"), { name: "SequelizeDatabaseError" })));
		assert.ok(isStoreOutage(Object.assign(new Error("server selection timed out"), { name: "MongoServerSelectionError" })));
		assert.ok(isStoreOutage({ name: "Error", code: "ECONNRESET", message: "socket hang up" }));
		// A query that is wrong is a bug, not an outage.
		assert.ok(!isStoreOutage(Object.assign(new Error('relation "nope" does not exist'), { name: "SequelizeDatabaseError" })));
		assert.equal(toEnvelope(Object.assign(new Error('relation "nope" does not exist'), { name: "SequelizeDatabaseError" })).statusCode, 500);
	});

	it("turns 'not reachable' errors into 503 SERVICE_UNAVAILABLE", () => {
		for (const err of [
			new Errors.ServiceNotFoundError({ action: "users.me" }),
			new Errors.ServiceNotAvailableError({ action: "users.me", nodeID: "n1" }),
			new Errors.RequestTimeoutError({ action: "users.me", nodeID: "n1" }),
		]) {
			assert.equal(toEnvelope(err).statusCode, 503, err.name);
			assert.equal(toEnvelope(err).code, "SERVICE_UNAVAILABLE");
		}
	});

	it("maps body-parser errors and hides anything unknown behind a generic 500", () => {
		assert.equal(toEnvelope(Object.assign(new Error("too big"), { type: "entity.too.large", status: 413 })).code, "PAYLOAD_TOO_LARGE");
		assert.equal(toEnvelope(Object.assign(new Error("Unexpected token"), { type: "entity.parse.failed", status: 400 })).code, "BAD_REQUEST");
		const internal = toEnvelope(new Error("connection string postgres://secret@db failed"));
		assert.deepEqual(internal, { statusCode: 500, code: "INTERNAL", message: "Internal server error" });
		assert.equal(toEnvelope(null).statusCode, 500);
		assert.equal(toEnvelope("a string").statusCode, 500);
	});
});
