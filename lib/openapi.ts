/**
 * The OpenAPI 3.0.3 description of the gateway's REST routes, served at GET /docs/openapi.json
 * and rendered by Swagger UI at GET /docs. Hand-written: keep it in step with the aliases in
 * services/api.service.ts, the parameter rules in services/users.service.ts and CONTRACT.md.
 */
import { ROLES } from "./constants";
import { ERROR_CODES } from "./errors";

type Obj = Record<string, unknown>;

// ---- Small builders for the fragments every operation repeats ----

/** A `$ref` into components. */
const ref = (kind: "schemas" | "responses" | "headers" | "parameters", name: string): Obj => ({ $ref: `#/components/${kind}/${name}` });
const schema = (name: string): Obj => ref("schemas", name);
const arrayOf = (items: Obj): Obj => ({ type: "array", items });

/** A JSON `content` map for a schema (or a `$ref` to one), with an optional example. */
function json(schemaOrRef: Obj, example?: unknown): Obj {
	return { "application/json": example === undefined ? { schema: schemaOrRef } : { schema: schemaOrRef, example } };
}

/** A required JSON request body. */
function body(schemaOrRef: Obj, description?: string): Obj {
	return { ...(description ? { description } : {}), required: true, content: json(schemaOrRef) };
}

/** An optional JSON request body (the refresh token may come in the cookie instead). */
function optionalBody(schemaOrRef: Obj, description: string): Obj {
	return { description, required: false, content: json(schemaOrRef) };
}

/** Headers on every answer: X-Trace-Id, plus any given. */
function headers(extra: Obj = {}): Obj {
	return { "X-Trace-Id": ref("headers", "XTraceId"), ...extra };
}

/** A successful JSON answer. */
function ok(description: string, schemaOrRef: Obj, extraHeaders?: Obj): Obj {
	return { description, headers: headers(extraHeaders), content: json(schemaOrRef) };
}

/** A 204 answer. */
function noContent(description: string, extraHeaders?: Obj): Obj {
	return { description, headers: headers(extraHeaders) };
}

/** The error statuses shared through components.responses, by status code. */
const ERROR_RESPONSES = {
	400: "BadRequest",
	401: "Unauthorized",
	403: "Forbidden",
	404: "NotFound",
	409: "Conflict",
	413: "PayloadTooLarge",
	429: "RateLimited",
	503: "ServiceUnavailable",
} as const;
type ErrorStatus = keyof typeof ERROR_RESPONSES;

/** References to the shared error answers for the given status codes. */
function errors(...statuses: ErrorStatus[]): Obj {
	return Object.fromEntries(statuses.map(status => [String(status), ref("responses", ERROR_RESPONSES[status])]));
}

/** An operation-specific error answer (the Error envelope with its own description and examples). */
function errorResponse(description: string, examples: Record<string, Obj>, extraHeaders?: Obj): Obj {
	return {
		description,
		headers: headers(extraHeaders),
		content: {
			"application/json": {
				schema: schema("Error"),
				examples: Object.fromEntries(Object.entries(examples).map(([name, value]) => [name, { value }])),
			},
		},
	};
}

/** An example error envelope. */
function errorExample(statusCode: number, code: (typeof ERROR_CODES)[number], message: string, details?: unknown): Obj {
	return { statusCode, code, message, traceId: "5f0c6a2e-8d3b-4c1e-9a57-2b6f1d9e0c42", ...(details === undefined ? {} : { details }) };
}

type Tag = "Health" | "Docs" | "Auth" | "Users" | "Roles";

interface OperationSpec {
	operationId: string;
	tag: Tag;
	summary: string;
	description?: string;
	/** true: Bearer access token required (and the per-user rate limit applies). */
	bearer?: boolean;
	parameters?: Obj[];
	requestBody?: Obj;
	responses: Obj;
}

/**
 * One operation. Every operation accepts the client's own X-Trace-Id; Bearer operations also
 * answer 401 (missing, bad or expired token), 429 (per-user rate limit) and 503, unless the
 * operation describes those itself.
 */
function operation(spec: OperationSpec): Obj {
	const responses = spec.bearer ? { ...errors(401, 429, 503), ...spec.responses } : spec.responses;
	return {
		operationId: spec.operationId,
		tags: [spec.tag],
		summary: spec.summary,
		...(spec.description ? { description: spec.description } : {}),
		security: spec.bearer ? [{ bearerAuth: [] }] : [],
		parameters: [ref("parameters", "TraceId"), ...(spec.parameters ?? [])],
		...(spec.requestBody ? { requestBody: spec.requestBody } : {}),
		responses: sortByStatus(responses),
	};
}

function sortByStatus(responses: Obj): Obj {
	return Object.fromEntries(Object.entries(responses).sort(([a], [b]) => a.localeCompare(b)));
}

const userIdParam: Obj = ref("parameters", "UserId");

/** An integer query parameter with bounds and a default. */
function intQuery(name: string, description: string, minimum: number, maximum: number, defaultValue: number): Obj {
	return { name, in: "query", required: false, description, schema: { type: "integer", minimum, maximum, default: defaultValue } };
}

// ---- Component schemas ----

const USERNAME: Obj = {
	type: "string",
	minLength: 3,
	maxLength: 32,
	pattern: "^[A-Za-z0-9_.-]+$",
	description: "3–32 characters: letters, digits, `_`, `.` and `-`. Surrounding whitespace is trimmed.",
	example: "alice",
};
const EMAIL: Obj = { type: "string", format: "email", maxLength: 254, description: "Stored in lower case.", example: "alice@example.com" };
const NEW_PASSWORD: Obj = {
	type: "string",
	format: "password",
	minLength: 8,
	maxLength: 72,
	description: "8 characters at least and at most 72 bytes in UTF-8 (bcrypt reads no more).",
	example: "correct horse battery",
};
const ROLE_NAME: Obj = { type: "string", enum: [...ROLES], example: "user" };
const TIMESTAMP: Obj = { type: "string", format: "date-time", description: "ISO-8601, UTC." };

const schemas: Record<string, Obj> = {
	Error: {
		type: "object",
		description: "Every REST error has this shape. 5xx answers never carry a stack trace or an internal message.",
		required: ["statusCode", "code", "message", "traceId"],
		properties: {
			statusCode: { type: "integer", description: "The HTTP status, repeated.", example: 400 },
			code: { type: "string", enum: [...ERROR_CODES], example: "VALIDATION_ERROR" },
			message: { type: "string", description: "Human-readable; do not parse it.", example: "Parameters validation error" },
			traceId: { type: "string", description: "Same as the X-Trace-Id response header.", example: "5f0c6a2e-8d3b-4c1e-9a57-2b6f1d9e0c42" },
			details: {
				...arrayOf(schema("ErrorDetail")),
				description: "Optional. For VALIDATION_ERROR: the failed fields. For CONFLICT: the field that is taken, e.g. `[{ \"field\": \"email\" }]`.",
				example: [{ field: "username", type: "stringMin", message: "The 'username' field length must be greater than or equal to 3 characters long.", expected: 3 }],
			},
		},
	},
	ErrorDetail: {
		type: "object",
		description: "One field an error is about. For VALIDATION_ERROR it has the failed rule and a message; the rejected value is never echoed.",
		required: ["field"],
		properties: {
			field: { type: "string", example: "username" },
			type: { type: "string", description: "The rule that failed (`required`, `stringMin`, `email`, …).", example: "stringMin" },
			message: { type: "string" },
			expected: { description: "The rule's bound, when it has one." },
		},
	},
	User: {
		type: "object",
		required: ["user_id", "id", "username", "avatar_url", "bio", "status", "role", "roles", "created_at", "updated_at"],
		properties: {
			user_id: { type: "integer", example: 42 },
			id: { type: "integer", description: "Alias of `user_id`.", example: 42 },
			username: { type: "string", example: "alice" },
			email: { type: "string", format: "email", description: "Present only when the caller is this user or an admin.", example: "alice@example.com" },
			avatar_url: { type: "string", nullable: true, description: "An http(s) URL or a path on this server.", example: "/files/3f9a1c0d2b" },
			bio: { type: "string", nullable: true, maxLength: 500, example: "Coffee first." },
			status: { type: "string", description: "Presence, e.g. `online` or `offline`.", example: "offline" },
			role: { ...ROLE_NAME, description: "The most privileged of `roles` (admin, then moderator, then user)." },
			roles: { type: "array", items: ROLE_NAME, example: ["user"] },
			created_at: TIMESTAMP,
			updated_at: TIMESTAMP,
		},
	},
	Tokens: {
		type: "object",
		required: ["accessToken", "refreshToken"],
		properties: {
			accessToken: {
				type: "string",
				description: "JWT (HS256) with `sub` (the user id as a string), `username`, `roles`, `iat`, `exp`. Send as `Authorization: Bearer <accessToken>`.",
				example: "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImFsaWNlIn0.c2lnbmF0dXJl",
			},
			refreshToken: {
				type: "string",
				description: "Opaque, single use. Also set as the httpOnly cookie `refreshToken` (path `/auth`).",
				example: "k3Jd9sQ0vX1m7Zr2pL8aT5yW4bN6cE0f",
			},
		},
	},
	AuthResult: {
		type: "object",
		required: ["user", "accessToken", "refreshToken"],
		properties: {
			user: schema("User"),
			accessToken: { type: "string", description: "As in `Tokens`." },
			refreshToken: { type: "string", description: "As in `Tokens`." },
		},
	},
	UserPage: {
		type: "object",
		required: ["data", "total", "page", "limit", "totalPages"],
		properties: {
			data: arrayOf(schema("User")),
			total: { type: "integer", minimum: 0, description: "Users matching, on all pages.", example: 1 },
			page: { type: "integer", minimum: 1, example: 1 },
			limit: { type: "integer", minimum: 1, maximum: 100, example: 50 },
			totalPages: { type: "integer", minimum: 0, example: 1 },
		},
	},
	Role: {
		type: "object",
		required: ["id", "name"],
		properties: {
			id: { type: "integer", example: 3 },
			name: ROLE_NAME,
		},
	},
	Health: {
		type: "object",
		required: ["status", "node", "services", "cluster"],
		properties: {
			status: { type: "string", enum: ["ok", "starting"], description: "`ok` once this node's services have started." },
			node: { type: "string", description: "This node's Moleculer node id.", example: "parley-api-1" },
			services: { type: "array", items: { type: "string" }, description: "Services running on this node.", example: ["api", "users"] },
			cluster: { type: "array", items: { type: "string" }, description: "Services available anywhere in the cluster, sorted.", example: ["api", "users"] },
		},
	},
	RegisterRequest: {
		type: "object",
		required: ["username", "email", "password"],
		properties: {
			username: USERNAME,
			email: EMAIL,
			password: NEW_PASSWORD,
			confirmPassword: { type: "string", format: "password", description: "Optional; when given it must equal `password`." },
		},
	},
	LoginRequest: {
		type: "object",
		description:
			"Give `email` or `username` (one is enough) and `password`. The login name may be sent in either field: a value containing `@` is looked up as an email, any other as a username.",
		required: ["password"],
		anyOf: [{ required: ["email"] }, { required: ["username"] }],
		properties: {
			email: { type: "string", minLength: 1, maxLength: 254, example: "alice@example.com" },
			username: { type: "string", minLength: 1, maxLength: 254, example: "alice" },
			password: { type: "string", format: "password", minLength: 1, maxLength: 200, example: "correct horse battery" },
		},
	},
	RefreshTokenRequest: {
		type: "object",
		description: "The refresh token; may be left out when the `refreshToken` cookie is sent.",
		properties: {
			refreshToken: { type: "string", minLength: 1, maxLength: 200 },
		},
	},
	ChangePasswordRequest: {
		type: "object",
		required: ["oldPassword", "newPassword"],
		properties: {
			oldPassword: { type: "string", format: "password", minLength: 1, maxLength: 200 },
			newPassword: NEW_PASSWORD,
		},
	},
	UpdateUserRequest: {
		type: "object",
		description: "Every field optional; only the fields given change. Unknown fields are ignored.",
		properties: {
			username: USERNAME,
			email: EMAIL,
			avatar_url: {
				type: "string",
				nullable: true,
				maxLength: 2048,
				description: "An http(s) URL or a path starting with `/`; `null` (or an empty string) removes the avatar.",
				example: "/files/3f9a1c0d2b",
			},
			bio: { type: "string", nullable: true, maxLength: 500, description: "`null` removes it.", example: "Coffee first." },
		},
	},
	BatchUsersRequest: {
		type: "object",
		required: ["ids"],
		properties: {
			ids: {
				type: "array",
				maxItems: 100,
				items: { type: "integer", minimum: 1 },
				description: "User ids (numeric strings are accepted too); duplicates are looked up once.",
				example: [42, 7, 13],
			},
		},
	},
	SetRolesRequest: {
		type: "object",
		required: ["roles"],
		properties: {
			roles: {
				type: "array",
				minItems: 1,
				maxItems: ROLES.length,
				uniqueItems: true,
				items: ROLE_NAME,
				description: "The user's complete set of roles (replaces the current one).",
				example: ["moderator", "user"],
			},
		},
	},
};

// ---- Shared answers, headers, parameters, security schemes ----

const RETRY_AFTER: Obj = { "Retry-After": ref("headers", "RetryAfter") };
const SET_REFRESH_COOKIE: Obj = { "Set-Cookie": ref("headers", "SetRefreshCookie") };

const responses: Record<string, Obj> = {
	BadRequest: errorResponse("The request is invalid: `VALIDATION_ERROR` (the failed fields in `details`) or `BAD_REQUEST` (e.g. malformed JSON).", {
		validation: errorExample(400, "VALIDATION_ERROR", "Parameters validation error", [{ field: "limit", type: "numberMax", message: "The 'limit' field must be less than or equal to 100.", expected: 100 }]),
		badRequest: errorExample(400, "BAD_REQUEST", "Malformed JSON body"),
	}),
	InvalidCredentials: errorResponse("`INVALID_CREDENTIALS` when the password (or the account) is wrong; `VALIDATION_ERROR` when the body is invalid.", {
		invalidCredentials: errorExample(400, "INVALID_CREDENTIALS", "Invalid credentials"),
		validation: errorExample(400, "VALIDATION_ERROR", "Give an email or a username", [{ field: "email", type: "required", message: "Give an email or a username" }]),
	}),
	Unauthorized: errorResponse("`UNAUTHORIZED`: the Bearer access token is missing, malformed or expired (or, on /auth/refresh, the refresh token is missing, unknown, spent or expired).", {
		unauthorized: errorExample(401, "UNAUTHORIZED", "Invalid or expired token"),
	}),
	Forbidden: errorResponse("`FORBIDDEN`: the caller may not do this (not the user itself, or not an admin).", {
		forbidden: errorExample(403, "FORBIDDEN", "You may not do this"),
	}),
	NotFound: errorResponse("`NOT_FOUND`: no such user.", {
		notFound: errorExample(404, "NOT_FOUND", "User not found"),
	}),
	Conflict: errorResponse("`CONFLICT`: the username or the email is already taken by another user (`details: [{ field }]`).", {
		username: errorExample(409, "CONFLICT", "This username is already taken", [{ field: "username" }]),
		email: errorExample(409, "CONFLICT", "This email is already taken", [{ field: "email" }]),
	}),
	PayloadTooLarge: errorResponse("`PAYLOAD_TOO_LARGE`: the JSON body is over 1 MiB.", {
		tooLarge: errorExample(413, "PAYLOAD_TOO_LARGE", "Request body too large"),
	}),
	RateLimited: errorResponse(
		"`RATE_LIMITED`: too many requests. Wait the number of seconds in `Retry-After` before trying again.",
		{ rateLimited: errorExample(429, "RATE_LIMITED", "Too many requests, slow down") },
		RETRY_AFTER,
	),
	ServiceUnavailable: errorResponse("`SERVICE_UNAVAILABLE`: a backing service is down or did not answer in time; try again later.", {
		unavailable: errorExample(503, "SERVICE_UNAVAILABLE", "Service unavailable, try again later"),
	}),
};

const componentHeaders: Record<string, Obj> = {
	XTraceId: {
		description: "The request's trace id: the client's own `X-Trace-Id` if it sent a sane one (1–128 of `A-Z a-z 0-9 . _ : -`), else a new UUID. Also in the error envelope as `traceId`.",
		schema: { type: "string", example: "5f0c6a2e-8d3b-4c1e-9a57-2b6f1d9e0c42" },
	},
	RetryAfter: {
		description: "Seconds to wait before retrying (at least 1).",
		schema: { type: "integer", minimum: 1, example: 1 },
	},
	SetRefreshCookie: {
		description: "`refreshToken=<token>; Path=/auth; HttpOnly; SameSite=Lax; Max-Age=<refresh lifetime>` (plus `Secure` over HTTPS or in production). On logout the cookie is cleared with `Max-Age=0`.",
		schema: { type: "string", example: "refreshToken=k3Jd9sQ0vX1m7Zr2pL8aT5yW4bN6cE0f; Path=/auth; HttpOnly; SameSite=Lax; Max-Age=2592000" },
	},
};

const parameters: Record<string, Obj> = {
	TraceId: {
		name: "X-Trace-Id",
		in: "header",
		required: false,
		description: "Optional client trace id, echoed in the `X-Trace-Id` response header and carried through every service call.",
		schema: { type: "string", pattern: "^[A-Za-z0-9._:-]{1,128}$" },
	},
	UserId: {
		name: "id",
		in: "path",
		required: true,
		description: "The user's id.",
		schema: { type: "integer", minimum: 1, example: 42 },
	},
	RefreshTokenCookie: {
		name: "refreshToken",
		in: "cookie",
		required: false,
		description: "The httpOnly refresh-token cookie set by register, login and refresh; used when the body has no `refreshToken`.",
		schema: { type: "string" },
	},
};

const securitySchemes: Record<string, Obj> = {
	bearerAuth: {
		type: "http",
		scheme: "bearer",
		bearerFormat: "JWT",
		description: "The access token from register, login or refresh: `Authorization: Bearer <accessToken>`. Lifetime 15 minutes by default (`ACCESS_TOKEN_TTL`).",
	},
	refreshCookie: {
		type: "apiKey",
		in: "cookie",
		name: "refreshToken",
		description: "The httpOnly cookie `refreshToken` (path `/auth`) set by register, login and refresh. Read only by POST /auth/refresh and POST /auth/logout, as an alternative to `refreshToken` in the body.",
	},
};

// ---- Operations ----

const paths: Record<string, Obj> = {
	"/health": {
		get: operation({
			operationId: "getHealth",
			tag: "Health",
			summary: "Liveness and readiness of this gateway node",
			description: "200 once this node's services have started; 503 with `status: \"starting\"` before that. Not rate-limited; needs no token.",
			responses: {
				200: ok("The node is up.", schema("Health")),
				503: ok("The node is still starting.", schema("Health")),
			},
		}),
	},
	"/docs": {
		get: operation({
			operationId: "getDocsPage",
			tag: "Docs",
			summary: "Interactive API documentation (Swagger UI)",
			responses: {
				200: { description: "An HTML page rendering /docs/openapi.json.", headers: headers(), content: { "text/html": { schema: { type: "string" } } } },
			},
		}),
	},
	"/docs/openapi.json": {
		get: operation({
			operationId: "getOpenApiDocument",
			tag: "Docs",
			summary: "This OpenAPI document",
			responses: {
				200: ok("The OpenAPI 3.0.3 document.", { type: "object", additionalProperties: true }),
			},
		}),
	},

	"/auth/register": {
		post: operation({
			operationId: "register",
			tag: "Auth",
			summary: "Create an account and log in",
			description: "Creates a user with the role `user` and starts a login: answers the user, an access token and a refresh token, and sets the refresh-token cookie. Rate-limited per client address.",
			requestBody: body(schema("RegisterRequest")),
			responses: {
				201: ok("Registered and logged in.", schema("AuthResult"), SET_REFRESH_COOKIE),
				...errors(400, 409, 413, 429, 503),
			},
		}),
	},
	"/auth/login": {
		post: operation({
			operationId: "login",
			tag: "Auth",
			summary: "Log in with email or username and password",
			description:
				"Answers as register (200) and sets the refresh-token cookie. Wrong credentials (unknown account or wrong password) are 400 `INVALID_CREDENTIALS`. " +
				"Besides the per-address limit, repeated failed logins for one account block further attempts on it for a growing time: 429 with `Retry-After`.",
			requestBody: body(schema("LoginRequest")),
			responses: {
				200: ok("Logged in.", schema("AuthResult"), SET_REFRESH_COOKIE),
				400: ref("responses", "InvalidCredentials"),
				429: errorResponse(
					"`RATE_LIMITED`: too many requests from this address, or too many failed logins for this account. Wait `Retry-After` seconds.",
					{ rateLimited: errorExample(429, "RATE_LIMITED", "Too many requests, slow down") },
					RETRY_AFTER,
				),
				...errors(413, 503),
			},
		}),
	},
	"/auth/refresh": {
		post: operation({
			operationId: "refreshTokens",
			tag: "Auth",
			summary: "Exchange a refresh token for new tokens (rotation)",
			description:
				"Takes the refresh token from the body or, failing that, from the `refreshToken` cookie (see the `refreshCookie` security scheme). " +
				"The token presented is spent: the answer carries a new refresh token (also set as the cookie) and a new access token. " +
				"Presenting a spent token again revokes that login's whole token family, and answers 401.",
			parameters: [ref("parameters", "RefreshTokenCookie")],
			requestBody: optionalBody(schema("RefreshTokenRequest"), "Optional when the cookie is sent."),
			responses: {
				200: ok("New tokens.", schema("Tokens"), SET_REFRESH_COOKIE),
				401: errorResponse("`UNAUTHORIZED`: no refresh token, or it is unknown, expired, revoked or already spent.", {
					missing: errorExample(401, "UNAUTHORIZED", "Refresh token required"),
					invalid: errorExample(401, "UNAUTHORIZED", "Invalid refresh token"),
					expired: errorExample(401, "UNAUTHORIZED", "Refresh token expired"),
				}),
				...errors(400, 413, 429, 503),
			},
		}),
	},
	"/auth/logout": {
		post: operation({
			operationId: "logout",
			tag: "Auth",
			summary: "End a login",
			description:
				"Revokes the refresh token given in the body or the `refreshToken` cookie (with the rest of its login's token family) and clears the cookie. " +
				"Answers 204 even when no token, or an unknown one, is given. Access tokens already issued stay valid until they expire.",
			parameters: [ref("parameters", "RefreshTokenCookie")],
			requestBody: optionalBody(schema("RefreshTokenRequest"), "Optional when the cookie is sent."),
			responses: {
				204: noContent("Logged out; the cookie is cleared.", SET_REFRESH_COOKIE),
				...errors(400, 413, 429, 503),
			},
		}),
	},

	"/users/me": {
		get: operation({
			operationId: "getMe",
			tag: "Users",
			summary: "The caller's own user (with email)",
			bearer: true,
			responses: {
				200: ok("The caller.", schema("User")),
			},
		}),
	},
	"/users/search": {
		get: operation({
			operationId: "searchUsers",
			tag: "Users",
			summary: "Find users by username or email prefix",
			description: "Case-insensitive prefix match on username or email; an exact username match comes first, then shorter usernames.",
			bearer: true,
			parameters: [
				{ name: "q", in: "query", required: true, description: "The prefix (trimmed).", schema: { type: "string", minLength: 1, maxLength: 100 } },
				intQuery("limit", "At most this many users.", 1, 100, 20),
			],
			responses: {
				200: ok("Matching users.", arrayOf(schema("User"))),
				...errors(400),
			},
		}),
	},
	"/users/batch": {
		post: operation({
			operationId: "getUsersBatch",
			tag: "Users",
			summary: "Look up several users by id",
			description: "Answers the users in the order asked; unknown ids are left out. Cheap enough to call on every typing event.",
			bearer: true,
			requestBody: body(schema("BatchUsersRequest")),
			responses: {
				200: ok("The users found.", arrayOf(schema("User"))),
				...errors(400, 413),
			},
		}),
	},
	"/users/change-password": {
		post: operation({
			operationId: "changePassword",
			tag: "Users",
			summary: "Change the caller's password",
			description:
				"Checks `oldPassword`, sets `newPassword` and ends every login of the account: all its refresh tokens are revoked (access tokens already issued run until they expire). Log in again afterwards.",
			bearer: true,
			requestBody: body(schema("ChangePasswordRequest")),
			responses: {
				204: noContent("Password changed; every refresh token of the account is revoked."),
				400: ref("responses", "InvalidCredentials"),
				...errors(413),
			},
		}),
	},
	"/users": {
		get: operation({
			operationId: "listUsers",
			tag: "Users",
			summary: "List users, a page at a time",
			description: "Newest first. `search` matches, case-insensitively, a substring of the username or a prefix of the email.",
			bearer: true,
			parameters: [
				{ name: "search", in: "query", required: false, description: "Filter (trimmed).", schema: { type: "string", maxLength: 100 } },
				intQuery("page", "1-based page number.", 1, 100000, 1),
				intQuery("limit", "Users per page.", 1, 100, 50),
			],
			responses: {
				200: ok("One page of users.", schema("UserPage")),
				...errors(400),
			},
		}),
	},
	"/users/{id}": {
		get: operation({
			operationId: "getUser",
			tag: "Users",
			summary: "One user (public fields; email only for self or an admin)",
			bearer: true,
			parameters: [userIdParam],
			responses: {
				200: ok("The user.", schema("User")),
				...errors(400, 404),
			},
		}),
		put: updateUserOperation("updateUser"),
		patch: updateUserOperation("patchUser"),
		delete: operation({
			operationId: "deleteUser",
			tag: "Users",
			summary: "Delete a user (self or admin)",
			description: "Deletes the account with its roles and refresh tokens. The last admin cannot be deleted (409).",
			bearer: true,
			parameters: [userIdParam],
			responses: {
				204: noContent("Deleted."),
				409: errorResponse("`CONFLICT`: this is the last admin.", { lastAdmin: errorExample(409, "CONFLICT", "The last admin cannot be deleted") }),
				...errors(400, 403, 404),
			},
		}),
	},
	"/users/{id}/roles": {
		put: operation({
			operationId: "setUserRoles",
			tag: "Users",
			summary: "Replace a user's roles (admin only)",
			description: "Sets the complete set of roles. Removing the admin role from the last admin is refused (409).",
			bearer: true,
			parameters: [userIdParam],
			requestBody: body(schema("SetRolesRequest")),
			responses: {
				200: ok("The user with its new roles.", schema("User")),
				409: errorResponse("`CONFLICT`: the user is the last admin and `roles` lacks `admin`.", {
					lastAdmin: errorExample(409, "CONFLICT", "The last admin cannot lose the admin role"),
				}),
				...errors(400, 403, 404, 413),
			},
		}),
	},
	"/roles": {
		get: operation({
			operationId: "listRoles",
			tag: "Roles",
			summary: "The roles that exist",
			bearer: true,
			responses: {
				200: ok("Every role.", arrayOf(schema("Role"))),
			},
		}),
	},
};

/** PUT and PATCH /users/{id} are the same partial update. */
function updateUserOperation(operationId: string): Obj {
	return operation({
		operationId,
		tag: "Users",
		summary: "Update a user's profile (self or admin)",
		description: "Both PUT and PATCH change only the fields given. Only the user itself or an admin may do it.",
		bearer: true,
		parameters: [userIdParam],
		requestBody: body(schema("UpdateUserRequest")),
		responses: {
			200: ok("The updated user.", schema("User")),
			...errors(400, 403, 404, 409, 413),
		},
	});
}

const DESCRIPTION = `REST API of Parley, a self-hostable chat backend. Every route is reached through the API gateway.

## Authentication

Register or log in under \`/auth\` to get an **access token** (a JWT, valid **15 minutes** by default) and a **refresh token**.
Send the access token on every other route as \`Authorization: Bearer <accessToken>\`; a missing, malformed or expired token is \`401 UNAUTHORIZED\`.
The refresh token is also set as an httpOnly cookie \`refreshToken\` (path \`/auth\`). \`POST /auth/refresh\` spends it and returns a new pair
(rotation); presenting a spent refresh token again revokes that whole login. \`POST /auth/logout\` revokes it and clears the cookie.

## Errors

Every error is JSON: \`{ statusCode, code, message, traceId, details? }\` with \`code\` one of ${ERROR_CODES.map(c => `\`${c}\``).join(", ")}.
Status codes follow their HTTP meaning (400, 401, 403, 404, 409, 413, 415, 429, 503; a 500 never carries a stack trace).
\`VALIDATION_ERROR\` lists the failed fields in \`details\`. Wrong login credentials are \`400 INVALID_CREDENTIALS\`.
JSON bodies are limited to 1 MiB (413).

## Rate limits

Requests over a limit get \`429 RATE_LIMITED\` with a \`Retry-After\` header (seconds). Routes with a token are limited per user
(\`RATE_LIMIT\`, 20 requests/s by default); the \`/auth\` routes per client address (\`RATE_LIMIT_AUTH\`, 10 requests/s by default);
repeated failed logins for one account are slowed down separately.

## Tracing

Every response carries an \`X-Trace-Id\` header: the client's own \`X-Trace-Id\` if it sent one, else a new id. Errors repeat it as \`traceId\`.`;

export const openApiDocument: Record<string, unknown> = {
	openapi: "3.0.3",
	info: {
		title: "Parley API",
		version: "1.0.0",
		description: DESCRIPTION,
		license: { name: "MIT", url: "https://opensource.org/licenses/MIT" },
	},
	servers: [{ url: "/", description: "This gateway" }],
	tags: [
		{ name: "Health", description: "Node liveness and readiness." },
		{ name: "Docs", description: "This documentation." },
		{ name: "Auth", description: "Accounts and tokens. No access token; rate-limited per client address." },
		{ name: "Users", description: "Users and their profiles. Bearer token required." },
		{ name: "Roles", description: "Role names. Bearer token required." },
	],
	paths,
	components: {
		schemas,
		responses,
		headers: componentHeaders,
		parameters,
		securitySchemes,
	},
};
