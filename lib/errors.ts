/**
 * The error codes of the API (documented at /docs) and the one way services raise them.
 * MoleculerClientError keeps (message, code = HTTP status, type = contract code, data)
 * across the transporter, so a remote service's error reaches the gateway intact.
 */
import { Errors } from "moleculer";

export const ERROR_CODES = [
	"BAD_REQUEST",
	"VALIDATION_ERROR",
	"UNAUTHORIZED",
	"INVALID_CREDENTIALS",
	"FORBIDDEN",
	"NOT_FOUND",
	"CONFLICT",
	"PAYLOAD_TOO_LARGE",
	"UNSUPPORTED_MEDIA_TYPE",
	"RATE_LIMITED",
	"SERVICE_UNAVAILABLE",
	"INTERNAL",
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export const STATUS_OF: Record<ErrorCode, number> = {
	BAD_REQUEST: 400,
	VALIDATION_ERROR: 400,
	UNAUTHORIZED: 401,
	INVALID_CREDENTIALS: 400,
	FORBIDDEN: 403,
	NOT_FOUND: 404,
	CONFLICT: 409,
	PAYLOAD_TOO_LARGE: 413,
	UNSUPPORTED_MEDIA_TYPE: 415,
	RATE_LIMITED: 429,
	SERVICE_UNAVAILABLE: 503,
	INTERNAL: 500,
};

export function appError(code: ErrorCode, message: string, data?: unknown): Errors.MoleculerError {
	const status = STATUS_OF[code];
	return status >= 500
		? new Errors.MoleculerRetryableError(message, status, code, data)
		: new Errors.MoleculerClientError(message, status, code, data);
}

export const badRequest = (message: string, details?: unknown) => appError("BAD_REQUEST", message, details);
export const validationError = (message: string, details: unknown) => appError("VALIDATION_ERROR", message, details);
export const unauthorized = (message = "Authentication required") => appError("UNAUTHORIZED", message);
export const invalidCredentials = () => appError("INVALID_CREDENTIALS", "Invalid credentials");
export const forbidden = (message = "You may not do this") => appError("FORBIDDEN", message);
export const notFound = (what = "Resource") => appError("NOT_FOUND", `${what} not found`);
export const conflict = (message: string, details?: unknown) => appError("CONFLICT", message, details);
export const rateLimited = (retryAfterSeconds: number) =>
	appError("RATE_LIMITED", "Too many requests, slow down", { retryAfter: Math.max(1, Math.ceil(retryAfterSeconds)) });

export interface ErrorEnvelope {
	statusCode: number;
	code: ErrorCode;
	message: string;
	details?: unknown;
	retryAfter?: number;
}

/** Moleculer's own error types that mean "the service behind this is not reachable". */
const UNAVAILABLE_TYPES = new Set([
	"SERVICE_NOT_FOUND",
	"SERVICE_NOT_AVAILABLE",
	"REQUEST_TIMEOUT",
	"REQUEST_SKIPPED",
	"REQUEST_REJECTED",
	"QUEUE_FULL",
	"BROKER_DISCONNECTED",
	"SERVICE_UNAVAILABLE",
]);

/**
 * A database that cannot be reached right now (PostgreSQL through Sequelize, MongoDB through its
 * driver, or the socket under either): an outage, not a bug. Matched by name and message, as they
 * also arrive from another node, where the error is rebuilt from its serialized fields.
 */
const STORE_OUTAGE_NAMES = /^(Sequelize(Connection|ConnectionRefused|ConnectionTimedOut|ConnectionAcquireTimeout|HostNotFound|HostNotReachable|InvalidConnection)Error|Mongo(Network|NetworkTimeout|ServerSelection|NotConnected|TopologyClosed|PoolCleared)Error)$/;
const STORE_OUTAGE_MESSAGES = /Connection terminated|ECONNREFUSED|ECONNRESET|EHOSTUNREACH|connect ETIMEDOUT|Client has encountered a connection error|Connection is closed/;

export function isStoreOutage(err: unknown): boolean {
	const e = (err ?? {}) as { name?: unknown; message?: unknown; code?: unknown };
	if (typeof e.name === "string" && STORE_OUTAGE_NAMES.test(e.name)) return true;
	if (typeof e.code === "string" && ["ECONNREFUSED", "ECONNRESET", "EHOSTUNREACH", "ETIMEDOUT", "EPIPE"].includes(e.code)) return true;
	return (e.name === "SequelizeDatabaseError" || e.name === "Error" || e.name === "MongoError") && typeof e.message === "string" && STORE_OUTAGE_MESSAGES.test(e.message);
}

/**
 * Turn any error (ours, Moleculer's, moleculer-web's, body-parser's) into the contract's
 * envelope fields. Unknown errors become 500 INTERNAL with a generic message: no stack,
 * no internal message leaks to the client.
 */
export function toEnvelope(err: unknown): ErrorEnvelope {
	const e = (err ?? {}) as { type?: unknown; code?: unknown; status?: unknown; message?: unknown; data?: unknown; name?: unknown };
	const type = typeof e.type === "string" ? e.type : "";
	const numeric = typeof e.code === "number" ? e.code : typeof e.status === "number" ? e.status : 500;
	const message = typeof e.message === "string" && e.message ? e.message : "Error";

	if ((ERROR_CODES as readonly string[]).includes(type)) {
		const code = type as ErrorCode;
		const out: ErrorEnvelope = { statusCode: STATUS_OF[code], code, message };
		const retryAfter = (e.data as { retryAfter?: unknown } | undefined)?.retryAfter;
		if (code === "RATE_LIMITED") {
			out.retryAfter = typeof retryAfter === "number" ? retryAfter : 1;
		} else if (code === "SERVICE_UNAVAILABLE" && typeof retryAfter === "number") {
			// "Busy, come back in a moment" (e.g. too many large uploads at once).
			out.retryAfter = retryAfter;
		} else if (e.data != null && code !== "INTERNAL") {
			out.details = code === "VALIDATION_ERROR" ? cleanValidationDetails(e.data) : e.data;
		}
		return out;
	}
	// Moleculer's parameter validator: 422 VALIDATION_ERROR with the failed fields in data.
	if (e.name === "ValidationError") {
		return { statusCode: 400, code: "VALIDATION_ERROR", message: "Parameters validation error", details: cleanValidationDetails(e.data) };
	}
	// A database outage: clients and load balancers retry a 503.
	if (isStoreOutage(err)) {
		return { statusCode: 503, code: "SERVICE_UNAVAILABLE", message: "A database is unavailable, try again later", retryAfter: 2 };
	}
	if (UNAVAILABLE_TYPES.has(type) || ["ServiceNotFoundError", "ServiceNotAvailableError", "ServiceUnavailableError", "RequestTimeoutError"].includes(String(e.name)) || numeric === 503) {
		return { statusCode: 503, code: "SERVICE_UNAVAILABLE", message: "Service unavailable, try again later" };
	}
	// body-parser errors carry `type` like "entity.too.large" and a `status`.
	if (type === "entity.too.large" || numeric === 413) {
		return { statusCode: 413, code: "PAYLOAD_TOO_LARGE", message: "Request body too large" };
	}
	if (type === "entity.parse.failed") {
		return { statusCode: 400, code: "BAD_REQUEST", message: "Malformed JSON body" };
	}
	if (type === "encoding.unsupported" || type === "charset.unsupported" || numeric === 415) {
		return { statusCode: 415, code: "UNSUPPORTED_MEDIA_TYPE", message: "Unsupported content encoding or type" };
	}
	if (e.name === "NotFoundError" || numeric === 404) {
		return { statusCode: 404, code: "NOT_FOUND", message: "Not found" };
	}
	if (e.name === "RateLimitExceeded" || numeric === 429) {
		return { statusCode: 429, code: "RATE_LIMITED", message: "Too many requests, slow down", retryAfter: 1 };
	}
	if (numeric === 401) return { statusCode: 401, code: "UNAUTHORIZED", message };
	if (numeric === 403) return { statusCode: 403, code: "FORBIDDEN", message };
	if (numeric === 409) return { statusCode: 409, code: "CONFLICT", message };
	if (numeric >= 400 && numeric < 500) return { statusCode: 400, code: "BAD_REQUEST", message };
	return { statusCode: 500, code: "INTERNAL", message: "Internal server error" };
}

/** fastest-validator's entries carry the rejected value in `actual`; never echo it (it may be a password). */
function cleanValidationDetails(data: unknown): unknown {
	if (!Array.isArray(data)) return data;
	return data.map(item => {
		const entry = item as Record<string, unknown>;
		const out: Record<string, unknown> = {};
		for (const key of ["field", "type", "message", "expected"]) if (entry[key] !== undefined) out[key] = entry[key];
		return out;
	});
}
