/**
 * The shared parts of the API documents: the entity schemas the answers are made of (one per
 * entity), the shared answers, headers, parameters and security schemes, and the small builders
 * the actions' `openapi` blocks use. lib/api-documents.ts puts them together with the actions'
 * declarations into /docs/openapi.json and /docs/asyncapi.json.
 */
import { MAX_CONTENT, MAX_GROUP_SIZE } from "./chat";
import { FILE_ID_SOURCE } from "./file-ids";
import { ACCEPTED_MIME_TYPES } from "./file-types";
import { ROLES } from "./constants";
import { ERROR_CODES } from "./errors";

export type Obj = Record<string, unknown>;

// ---- Small builders for the fragments every operation repeats ----

/** A `$ref` into components. */
export const ref = (kind: "schemas" | "responses" | "headers" | "parameters", name: string): Obj => ({ $ref: `#/components/${kind}/${name}` });
export const schema = (name: string): Obj => ref("schemas", name);
export const arrayOf = (items: Obj): Obj => ({ type: "array", items });

/** A JSON `content` map for a schema (or a `$ref` to one), with an optional example. */
export function json(schemaOrRef: Obj, example?: unknown): Obj {
	return { "application/json": example === undefined ? { schema: schemaOrRef } : { schema: schemaOrRef, example } };
}

/** A required JSON request body. */
export function body(schemaOrRef: Obj, description?: string): Obj {
	return { ...(description ? { description } : {}), required: true, content: json(schemaOrRef) };
}

/** An optional JSON request body (the refresh token may come in the cookie instead). */
export function optionalBody(schemaOrRef: Obj, description: string): Obj {
	return { description, required: false, content: json(schemaOrRef) };
}

/** Headers on every answer: X-Trace-Id, plus any given. */
export function headers(extra: Obj = {}): Obj {
	return { "X-Trace-Id": ref("headers", "XTraceId"), ...extra };
}

/** A successful JSON answer. */
export function ok(description: string, schemaOrRef: Obj, extraHeaders?: Obj): Obj {
	return { description, headers: headers(extraHeaders), content: json(schemaOrRef) };
}

/** A 204 answer. */
export function noContent(description: string, extraHeaders?: Obj): Obj {
	return { description, headers: headers(extraHeaders) };
}

/** The error statuses shared through components.responses, by status code. */
export const ERROR_RESPONSES = {
	400: "BadRequest",
	401: "Unauthorized",
	403: "Forbidden",
	404: "NotFound",
	409: "Conflict",
	413: "PayloadTooLarge",
	415: "UnsupportedMediaType",
	429: "RateLimited",
	503: "ServiceUnavailable",
} as const;
export type ErrorStatus = keyof typeof ERROR_RESPONSES;

/** References to the shared error answers for the given status codes. */
export function errors(...statuses: ErrorStatus[]): Obj {
	return Object.fromEntries(statuses.map(status => [String(status), ref("responses", ERROR_RESPONSES[status])]));
}

/** An operation-specific error answer (the Error envelope with its own description and examples). */
export function errorResponse(description: string, examples: Record<string, Obj>, extraHeaders?: Obj): Obj {
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
export function errorExample(statusCode: number, code: (typeof ERROR_CODES)[number], message: string, details?: unknown): Obj {
	return { statusCode, code, message, traceId: "5f0c6a2e-8d3b-4c1e-9a57-2b6f1d9e0c42", ...(details === undefined ? {} : { details }) };
}

export type Tag = "Health" | "Docs" | "Auth" | "Users" | "Roles" | "Conversations" | "Messages" | "Notifications" | "Files";

export interface OperationSpec {
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
export function operation(spec: OperationSpec): Obj {
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

export function sortByStatus(responses: Obj): Obj {
	return Object.fromEntries(Object.entries(responses).sort(([a], [b]) => a.localeCompare(b)));
}

// ---- Component schemas ----

export const ROLE_NAME: Obj = { type: "string", enum: [...ROLES], example: "user" };
export const TIMESTAMP: Obj = { type: "string", format: "date-time", description: "ISO-8601, UTC." };
export const CONVERSATION_ID: Obj = { type: "string", minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9_-]+$", example: "66a1f0c2e4b0a1b2c3d4e5f6" };
export const MESSAGE_ID: Obj = { type: "string", example: "66a1f3d9e4b0a1b2c3d4e601" };
export const MESSAGE_TYPE: Obj = { type: "string", enum: ["text", "image", "file", "system"], example: "text" };
/** A user id in a request: an integer, or a numeric string. */
export const USER_ID_INPUT: Obj = { oneOf: [{ type: "integer", minimum: 1 }, { type: "string", pattern: "^[0-9]+$" }], example: 7 };
export const PARTICIPANTS: Obj = {
	type: "array",
	maxItems: MAX_GROUP_SIZE,
	items: USER_ID_INPUT,
	description: `The other users' ids (integers or numeric strings). A group has at most ${MAX_GROUP_SIZE} members, the creator included.`,
	example: [7],
};
export const GROUP_NAME: Obj = { type: "string", nullable: true, maxLength: 100, description: "A group's name (trimmed).", example: "Book club" };
export const NOTIFICATION_ID: Obj = { type: "string", minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9_-]+$", example: "66a1f4b7e4b0a1b2c3d4e610" };
/** Files: an upload's id is 16 random bytes in hex; it is the capability to read the file. */
export const FILE_ID_EXAMPLE = "3f9a1c0d2b7e4f6a8c5d1e0b9a7f3c2d";
export const FILE_URL_EXAMPLE = `/files/${FILE_ID_EXAMPLE}`;
export const FILE_ID: Obj = { type: "string", pattern: `^${FILE_ID_SOURCE}$`, description: "32 lower-case hex characters, random and unguessable.", example: FILE_ID_EXAMPLE };
/** At most this many files in one POST /upload/multiple (mixins/gateway-uploads.mixin.ts). */
export const MAX_UPLOAD_FILES = 10;
/** The size limits of uploads, as text (the numbers are configured in the environment). */
export const FILE_LIMIT_TEXT = "25 MiB by default (`FILE_MAX_BYTES`)";
/** How the type of an upload is decided: the same text on every upload route. */
export const FILE_TYPES_TEXT =
	"The type is decided from the file's content, never from the claimed type or the name " +
	"(the name only tells apart formats that share a container: `.docx`/`.xlsx`/`.pptx`/`.odt`/`.ods`/`.odp` in a ZIP, `.doc`/`.xls`/`.ppt`, `.csv`/`.md` text, `.weba` audio). " +
	"Accepted: images (PNG, JPEG, GIF, WebP), video (MP4, QuickTime, WebM), audio (MP3, MP4/M4A, Ogg, WAV, FLAC, WebM), PDF, " +
	"office documents (docx, xlsx, pptx, odt, ods, odp, doc, xls, ppt), plain text (UTF-8 text, CSV, Markdown) and archives (zip, gzip, 7z, rar). " +
	"SVG and HTML are never accepted, whatever they are called: served from this origin they could run script. Anything else is 415.";
export const GROUP_AVATAR: Obj = {
	type: "string",
	nullable: true,
	maxLength: 2048,
	description: "A group's picture: `/files/<fileId>` of an image the caller uploaded (400 `VALIDATION_ERROR` otherwise, 403 for someone else's file).",
	example: FILE_URL_EXAMPLE,
};

export const schemas: Record<string, Obj> = {
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
				oneOf: [arrayOf(schema("ErrorDetail")), { type: "object", additionalProperties: true }],
				description:
					"Optional. For VALIDATION_ERROR: the failed fields. For CONFLICT: the field that is taken, e.g. `[{ \"field\": \"email\" }]`. " +
					"For PAYLOAD_TOO_LARGE over the storage quota: `{ quota, used }` in bytes; for RATE_LIMITED on a socket: `{ retryAfter }`.",
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
		required: ["user_id", "id", "username", "avatar_url", "bio", "status", "last_seen_at", "role", "roles", "created_at", "updated_at"],
		properties: {
			user_id: { type: "integer", example: 42 },
			id: { type: "integer", description: "Alias of `user_id`.", example: 42 },
			username: { type: "string", example: "alice" },
			email: { type: "string", format: "email", description: "Present only when the caller is this user or an admin.", example: "alice@example.com" },
			avatar_url: { type: "string", nullable: true, description: "`/files/<fileId>`: an image of this server.", example: FILE_URL_EXAMPLE },
			bio: { type: "string", nullable: true, maxLength: 500, example: "Coffee first." },
			status: {
				type: "string",
				enum: ["online", "away", "offline"],
				description:
					"`online` while the user has a `/chat` socket open on any gateway node, `away` after 5 minutes without an event from any of them, `offline` otherwise. " +
					"`offline` to a user it blocked or that blocked it.",
				example: "offline",
			},
			last_seen_at: {
				...TIMESTAMP,
				nullable: true,
				description:
					"When the user's last `/chat` socket closed (while `away`: its last event); `null` while online, when never seen, when the user or the viewer hides it (`show_last_seen: false`), or across a block.",
			},
			show_last_seen: { type: "boolean", description: "Present only for the user itself (and admins): whether others see its `last_seen_at` (and it theirs).", example: true },
			role: { ...ROLE_NAME, description: "The most privileged of `roles` (admin, then moderator, then user)." },
			roles: { type: "array", items: ROLE_NAME, example: ["user"] },
			created_at: TIMESTAMP,
			updated_at: TIMESTAMP,
		},
	},
	Tokens: {
		type: "object",
		description: "`refreshToken` is left out when the request sent `X-Refresh-Transport: cookie` (then only the cookie carries it).",
		required: ["accessToken"],
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
		required: ["user", "accessToken"],
		properties: {
			user: schema("User"),
			accessToken: { type: "string", description: "As in `Tokens`." },
			refreshToken: { type: "string", description: "As in `Tokens`; left out when the request sent `X-Refresh-Transport: cookie` (then only the cookie carries it)." },
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
	Liveness: {
		type: "object",
		required: ["status", "node"],
		properties: { status: { type: "string", enum: ["ok"] }, node: { type: "string", description: "This node's id." } },
	},
	Readiness: {
		type: "object",
		required: ["status", "node", "failing", "checks"],
		properties: {
			status: { type: "string", enum: ["ready", "unavailable"] },
			node: { type: "string", description: "This node's id." },
			failing: { type: "array", items: { type: "string" }, description: "The checks that failed, e.g. `[\"postgresql\"]`.", example: [] },
			checks: {
				type: "object",
				additionalProperties: { type: "string" },
				description: "Each check: `ok`, or why it failed.",
				example: { services: "ok", transporter: "ok", postgresql: "ok" },
			},
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
	Conversation: {
		type: "object",
		description: "A conversation as the caller sees it: `unread_count`, `muted` and `pinned` are the caller's own.",
		required: [
			"id",
			"_id",
			"type",
			"isGroup",
			"participants",
			"name",
			"avatar",
			"admin_id",
			"moderator_ids",
			"initiator_id",
			"status",
			"last_message",
			"lastMessage",
			"last_seq",
			"unread_count",
			"unread_mentions",
			"muted",
			"pinned",
			"nicknames",
			"created_at",
			"updated_at",
		],
		properties: {
			id: CONVERSATION_ID,
			_id: { ...CONVERSATION_ID, description: "Alias of `id`." },
			type: { type: "string", enum: ["private", "group"], example: "private" },
			isGroup: { type: "boolean", description: "`type` is `group`.", example: false },
			participants: { type: "array", items: { type: "integer" }, description: "The members' user ids.", example: [42, 7] },
			name: { type: "string", nullable: true, maxLength: 100, description: "A group's name; `null` for private chats.", example: null },
			avatar: { type: "string", nullable: true, maxLength: 2048, description: "A group's picture: an http(s) URL or a path on this server.", example: null },
			admin_id: { type: "integer", nullable: true, description: "The group's admin; `null` for private chats.", example: null },
			moderator_ids: { type: "array", items: { type: "integer" }, description: "The group's moderators.", example: [] },
			initiator_id: { type: "integer", nullable: true, description: "Who created the conversation (for a private chat: who sent the message request).", example: 42 },
			status: {
				type: "string",
				enum: ["pending", "accepted", "declined"],
				description: "A new private chat is `pending` until the other side accepts (or declines) it; groups start `accepted`.",
				example: "accepted",
			},
			last_message: { allOf: [schema("LastMessage")], nullable: true, description: "`null` when there is none (or the caller cleared the history since)." },
			lastMessage: { allOf: [schema("LastMessage")], nullable: true, description: "Alias of `last_message`." },
			last_seq: { type: "integer", minimum: 0, description: "The `seq` of the newest message (0: none yet).", example: 12 },
			unread_count: { type: "integer", minimum: 0, description: "Messages after the caller's read position.", example: 2 },
			unread_mentions: { type: "integer", minimum: 0, description: "How many of the unread messages mention the caller (`@username`, or `@all` in a group); reset with `unread_count`.", example: 0 },
			muted: { type: "boolean", description: "The caller muted it (and the mute has not run out).", example: false },
			pinned: { type: "boolean", description: "The caller pinned it.", example: false },
			nicknames: {
				type: "object",
				additionalProperties: { type: "string", maxLength: 50 },
				description: "Nicknames in this conversation, by user id.",
				example: { 7: "Bobby" },
			},
			created_at: TIMESTAMP,
			updated_at: TIMESTAMP,
		},
	},
	LastMessage: {
		type: "object",
		description: "A summary of a conversation's newest message.",
		required: ["id", "content", "sender_id", "type", "deleted", "created_at", "createdAt"],
		properties: {
			id: MESSAGE_ID,
			content: { type: "string", maxLength: 200, description: "The first 200 characters; empty when the message was deleted.", example: "See you at eight." },
			sender_id: { type: "integer", example: 7 },
			type: MESSAGE_TYPE,
			deleted: { type: "boolean", example: false },
			created_at: TIMESTAMP,
			createdAt: { ...TIMESTAMP, description: "Alias of `created_at`." },
		},
	},
	Message: {
		type: "object",
		required: [
			"id",
			"_id",
			"conversation_id",
			"sender_id",
			"sender",
			"type",
			"content",
			"attachments",
			"seq",
			"client_id",
			"clientId",
			"seen_by",
			"delivered_to",
			"edited_at",
			"deleted",
			"system_data",
			"reactions",
			"reply_to",
			"reply_count",
			"mentions",
			"pinned_at",
			"pinned_by",
			"created_at",
			"createdAt",
			"updated_at",
		],
		properties: {
			id: MESSAGE_ID,
			_id: { ...MESSAGE_ID, description: "Alias of `id`." },
			conversation_id: CONVERSATION_ID,
			sender_id: { type: "integer", description: "The sender (for a `system` message: who caused it).", example: 7 },
			sender: schema("MessageSender"),
			type: MESSAGE_TYPE,
			content: { type: "string", maxLength: MAX_CONTENT, description: "Empty when the message was deleted.", example: "See you at eight." },
			attachments: {
				type: "array",
				maxItems: 10,
				items: { type: "string" },
				description: "File paths (`/files/<id>`) or URLs of this server; empty when the message was deleted.",
				example: [],
			},
			seq: {
				type: "integer",
				minimum: 1,
				description: "The message's position in its conversation, assigned by the server: 1, 2, 3 … with no gaps, so a client can tell what it missed.",
				example: 12,
			},
			client_id: { type: "string", nullable: true, maxLength: 100, description: "The sender's `clientId`, if it gave one.", example: "c-1718000000000-1" },
			clientId: { type: "string", nullable: true, maxLength: 100, description: "Alias of `client_id`.", example: "c-1718000000000-1" },
			seen_by: { type: "array", items: { type: "integer" }, description: "Users who read it.", example: [42] },
			delivered_to: { type: "array", items: { type: "integer" }, description: "Users whose device received it.", example: [42] },
			edited_at: { ...TIMESTAMP, nullable: true, description: "When it was last edited; `null` if never." },
			deleted: { type: "boolean", description: "Deleted messages stay as tombstones (their `seq` is kept) with empty content and attachments.", example: false },
			system_data: {
				type: "object",
				nullable: true,
				description: "For `system` messages (group changes, pins): what happened; `null` otherwise.",
				required: ["event", "userId", "actorId"],
				properties: {
					event: {
						type: "string",
						description:
							"`group_created`, `member_added`, `member_removed`, `member_left`, `admin_changed`, `moderator_promoted`, `moderator_demoted`, `renamed`, `avatar_changed` or `message_pinned`.",
						example: "member_added",
					},
					userId: { type: "integer", nullable: true, description: "The member it is about, if any.", example: 13 },
					actorId: { type: "integer", description: "Who did it.", example: 42 },
					messageId: { ...MESSAGE_ID, description: "`message_pinned`: the message that was pinned." },
				},
				example: null,
			},
			reactions: {
				type: "array",
				maxItems: 20,
				items: schema("Reaction"),
				description: "One entry per emoji (at most 20 distinct), in the order they were first used.",
				example: [{ emoji: "👍", count: 2, user_ids: [7, 42], me: true }],
			},
			reply_to: {
				type: "object",
				nullable: true,
				description: "The message this one answers (same conversation), or `null`.",
				required: ["id", "seq", "sender_id", "excerpt"],
				properties: {
					id: MESSAGE_ID,
					seq: { type: "integer", minimum: 1 },
					sender_id: { type: "integer" },
					excerpt: { type: "string", nullable: true, maxLength: 100, description: "The first 100 characters of the original; `null` once it is deleted." },
				},
				example: null,
			},
			reply_count: { type: "integer", minimum: 0, description: "How many messages answer this one (its thread: `message:list { replyTo }`).", example: 0 },
			mentions: { type: "array", items: { type: "integer" }, description: "Members named by `@username` (every member for `@all` in a group, by its admin or a moderator).", example: [] },
			pinned_at: { ...TIMESTAMP, nullable: true, description: "When it was pinned; `null` if it is not." },
			pinned_by: { type: "integer", nullable: true, description: "Who pinned it; `null` if it is not pinned.", example: null },
			created_at: TIMESTAMP,
			createdAt: { ...TIMESTAMP, description: "Alias of `created_at`." },
			updated_at: TIMESTAMP,
		},
	},
	Reaction: {
		type: "object",
		description: "The reactions of one emoji on a message, as the caller sees them.",
		required: ["emoji", "count", "user_ids", "me"],
		properties: {
			emoji: { type: "string", minLength: 1, maxLength: 32, description: "A Unicode emoji or a `:shortcode:`, 1–32 characters without whitespace.", example: "👍" },
			count: { type: "integer", minimum: 1, description: "How many users reacted with it.", example: 2 },
			user_ids: { type: "array", maxItems: 20, items: { type: "integer" }, description: "The first 20 who reacted.", example: [7, 42] },
			me: { type: "boolean", description: "The caller reacted with it.", example: true },
		},
	},
	ReactionSummary: {
		type: "object",
		description: "`Reaction` without `me` (in `message:reactions`, the same for every participant).",
		required: ["emoji", "count", "user_ids"],
		properties: {
			emoji: { type: "string", minLength: 1, maxLength: 32, example: "👍" },
			count: { type: "integer", minimum: 1, example: 2 },
			user_ids: { type: "array", maxItems: 20, items: { type: "integer" }, example: [7, 42] },
		},
	},
	Presence: {
		type: "object",
		description: "A user's presence as the receiver may see it.",
		required: ["userId", "status", "last_seen_at"],
		properties: {
			userId: { type: "integer", example: 7 },
			status: { type: "string", enum: ["online", "away", "offline"], example: "online" },
			last_seen_at: { ...TIMESTAMP, nullable: true, description: "`null` while online, when never seen, when hidden (`show_last_seen`), or across a block." },
		},
	},
	MessageSender: {
		type: "object",
		required: ["id", "name", "avatar_url"],
		properties: {
			id: { type: "integer", example: 7 },
			name: { type: "string", description: "The sender's username (empty when it cannot be looked up right now).", example: "bob" },
			avatar_url: { type: "string", nullable: true, example: null },
		},
	},
	ConversationSettings: {
		type: "object",
		description: "The caller's settings of one conversation.",
		required: ["muted", "pinned", "hidden", "muteUntil"],
		properties: {
			muted: { type: "boolean", description: "Muted now (a mute whose `muteUntil` has passed reads `false`).", example: true },
			pinned: { type: "boolean", example: false },
			hidden: { type: "boolean", description: "Hidden from the list until a new message arrives.", example: false },
			muteUntil: { ...TIMESTAMP, nullable: true, description: "When the mute ends; `null`: until unmuted (or not muted)." },
		},
	},
	Block: {
		type: "object",
		required: ["targetUserId", "target_user_id", "created_at"],
		properties: {
			targetUserId: { type: "integer", description: "The blocked user.", example: 13 },
			target_user_id: { type: "integer", description: "Alias of `targetUserId`.", example: 13 },
			created_at: TIMESTAMP,
		},
	},
	Nickname: {
		type: "object",
		required: ["target_user_id", "targetUserId", "nickname"],
		properties: {
			target_user_id: { type: "integer", example: 7 },
			targetUserId: { type: "integer", description: "Alias of `target_user_id`.", example: 7 },
			nickname: { type: "string", maxLength: 50, example: "Bobby" },
		},
	},
	MarkReadResult: {
		type: "object",
		required: ["unread_count"],
		properties: {
			unread_count: { type: "integer", enum: [0], example: 0 },
		},
	},
	CreateConversationRequest: {
		description:
			"Either shape is accepted. `participants` / `participantIds` are the other users (the caller is added; duplicates and the caller's own id are dropped). " +
			"Without `type` or `isGroup`, one other user makes a private chat and more make a group. A private chat has exactly one other participant; " +
			"`name` and `avatar` apply to groups only.",
		oneOf: [schema("CreateConversationByIds"), schema("CreateConversationByType")],
	},
	CreateConversationByIds: {
		type: "object",
		required: ["participantIds"],
		properties: {
			participantIds: PARTICIPANTS,
			isGroup: { type: "boolean", description: "`true`: a group; `false`: a private chat.", example: false },
			name: GROUP_NAME,
		},
	},
	CreateConversationByType: {
		type: "object",
		required: ["participants"],
		properties: {
			type: { type: "string", enum: ["private", "group"], example: "group" },
			participants: PARTICIPANTS,
			name: GROUP_NAME,
			avatar: GROUP_AVATAR,
		},
	},
	Notification: {
		type: "object",
		description: "One notification of the caller. Only its owner ever sees it.",
		required: [
			"id",
			"_id",
			"user_id",
			"type",
			"title",
			"content",
			"is_read",
			"isRead",
			"related_id",
			"sender_id",
			"sender_name",
			"sender_avatar",
			"conversation_name",
			"message_type",
			"created_at",
			"createdAt",
		],
		properties: {
			id: NOTIFICATION_ID,
			_id: { ...NOTIFICATION_ID, description: "Alias of `id`." },
			user_id: { type: "integer", description: "The owner: the caller.", example: 42 },
			type: {
				type: "string",
				enum: ["message", "message_request", "mention", "group_invite", "system"],
				description:
					"`message`: a new message in one of the caller's chats; `message_request`: someone started a private chat with the caller; " +
					"`mention`: a message that names the caller (`@username` or `@all`), even in a muted conversation, instead of its `message` notification; " +
					"`group_invite`: the caller was added to a group; `system`: an admin's broadcast.",
				example: "message",
			},
			title: {
				type: "string",
				maxLength: 200,
				description: "The sender's name (private chat), the group's name, \"<name> wants to message you\" (request), or the broadcast's title.",
				example: "bob",
			},
			content: {
				type: "string",
				maxLength: 2000,
				description: "The first 200 characters of the message, the invitation text, or the broadcast's content.",
				example: "See you at eight.",
			},
			is_read: { type: "boolean", example: false },
			isRead: { type: "boolean", description: "Alias of `is_read`.", example: false },
			related_id: { ...CONVERSATION_ID, nullable: true, description: "The conversation it is about; `null` for `system`." },
			sender_id: { type: "integer", nullable: true, description: "Who caused it (the sender, the inviter, the broadcasting admin).", example: 7 },
			sender_name: { type: "string", nullable: true, description: "The sender's or inviter's username; `null` for `system`.", example: "bob" },
			sender_avatar: { type: "string", nullable: true, description: "The sender's avatar, for `message` and `message_request`.", example: null },
			conversation_name: { type: "string", nullable: true, description: "The group's name; `null` for private chats and `system`.", example: null },
			message_type: {
				type: "string",
				nullable: true,
				description: "The message's type (`text`, `file`, …) for `message` and `message_request`; `null` otherwise.",
				example: "text",
			},
			created_at: TIMESTAMP,
			createdAt: { ...TIMESTAMP, description: "Alias of `created_at`." },
		},
	},
	UnreadCount: {
		type: "object",
		required: ["count"],
		properties: {
			count: { type: "integer", minimum: 0, description: "The caller's unread notifications.", example: 3 },
		},
	},
	ReadAllResult: {
		type: "object",
		required: ["count"],
		properties: {
			count: { type: "integer", enum: [0], description: "Nothing is unread now.", example: 0 },
		},
	},
	BroadcastResult: {
		type: "object",
		required: ["queued"],
		properties: {
			queued: {
				type: "integer",
				minimum: 0,
				description: "How many users the broadcast was queued for: the distinct `userIds`, or every user when `userIds` was left out.",
				example: 2,
			},
		},
	},
	File: {
		type: "object",
		description: "A stored upload. Anyone who has its `url` can read it without a token: the random `fileId` is the capability.",
		required: ["fileId", "url", "fileType", "fileName", "size", "mimetype"],
		properties: {
			fileId: FILE_ID,
			url: {
				type: "string",
				pattern: `^/files/${FILE_ID_SOURCE}$`,
				description: "`/files/<fileId>`, a path on this server: use it in `<img src>`, in a message's `attachments`, as an avatar, or to delete the file.",
				example: FILE_URL_EXAMPLE,
			},
			fileType: { type: "string", enum: ["image", "video", "audio", "document"], description: "The kind of file; everything that is not an image, a video or audio is a `document`.", example: "image" },
			fileName: {
				type: "string",
				minLength: 1,
				maxLength: 200,
				description:
					"The client's name for the file, for display only: cleaned of path parts, control characters, `\"` and leading dots, trimmed, at most 200 characters (`file` if nothing is left). " +
					"The stored name never comes from the client.",
				example: "holiday.png",
			},
			size: { type: "integer", minimum: 1, description: "Bytes.", example: 48213 },
			mimetype: { type: "string", enum: [...ACCEPTED_MIME_TYPES], description: "Decided from the content (see the Files tag); served as the file's `Content-Type`.", example: "image/png" },
		},
	},
	FileList: {
		type: "object",
		required: ["files"],
		properties: {
			files: { type: "array", minItems: 1, maxItems: MAX_UPLOAD_FILES, items: schema("File"), description: "The stored files, in the order they were sent." },
		},
	},
	Base64UploadRequest: {
		type: "object",
		required: ["fileName", "base64"],
		properties: {
			fileName: { type: "string", minLength: 1, maxLength: 500, description: "The file's name, for display (cleaned as `File.fileName`).", example: "holiday.png" },
			mimeType: { type: "string", maxLength: 200, description: "Optional and not trusted: the type is decided from the decoded bytes.", example: "image/png" },
			base64: {
				type: "string",
				minLength: 1,
				description:
					"The file's bytes in base64 (the standard or the URL-safe alphabet; whitespace is ignored). A `data:<type>;base64,` prefix (a data: URL) is accepted and dropped. " +
					"Decoded, at most the file limit (25 MiB by default); the whole JSON body may be up to 35 MiB.",
				example: "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==",
			},
		},
	},
	DeleteFileRequest: {
		type: "object",
		description: "Name the file by `fileId` or by `fileUrl` (one is enough; with both, `fileId` is used).",
		anyOf: [{ required: ["fileId"] }, { required: ["fileUrl"] }],
		properties: {
			fileId: { type: "string", maxLength: 64, description: "The file's id.", example: FILE_ID_EXAMPLE },
			fileUrl: {
				type: "string",
				maxLength: 2048,
				description: "The file's `url` (`/files/<fileId>`) or a full URL of it on this server (`https://host/files/<fileId>`, a query or fragment allowed).",
				example: FILE_URL_EXAMPLE,
			},
		},
	},
	AvatarUploadResult: {
		type: "object",
		required: ["url", "user"],
		properties: {
			url: { type: "string", pattern: `^/files/${FILE_ID_SOURCE}$`, description: "The new avatar's file: now the caller's `avatar_url`.", example: FILE_URL_EXAMPLE },
			user: schema("User"),
		},
	},
};

// ---- Shared answers, headers, parameters, security schemes ----

export const RETRY_AFTER: Obj = { "Retry-After": ref("headers", "RetryAfter") };
export const SET_REFRESH_COOKIE: Obj = { "Set-Cookie": ref("headers", "SetRefreshCookie") };
export const NEXT_CURSOR: Obj = { "X-Next-Cursor": ref("headers", "XNextCursor") };

export const responses: Record<string, Obj> = {
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
	ServiceUnavailable: errorResponse(
		"`SERVICE_UNAVAILABLE`: a backing service or database is down or did not answer in time; try again later (after `Retry-After` seconds when it is given).",
		{
			unavailable: errorExample(503, "SERVICE_UNAVAILABLE", "Service unavailable, try again later"),
			database: errorExample(503, "SERVICE_UNAVAILABLE", "A database is unavailable, try again later"),
		},
		RETRY_AFTER,
	),
	NotificationNotFound: errorResponse(
		"`NOT_FOUND`: no such notification, or it belongs to another user. The two answers are the same.",
		{ notFound: errorExample(404, "NOT_FOUND", "Notification not found") },
	),
	UnsupportedMediaType: errorResponse(
		"`UNSUPPORTED_MEDIA_TYPE`: the file's content is not of an accepted type (see the Files tag; SVG and HTML never are), whatever its name or claimed type. Nothing is kept.",
		{ unsupported: errorExample(415, "UNSUPPORTED_MEDIA_TYPE", "This type of file is not accepted") },
	),
	FileNotFound: errorResponse("`NOT_FOUND`: no such file (or it was deleted).", {
		notFound: errorExample(404, "NOT_FOUND", "File not found"),
	}),
	ConversationNotFound: errorResponse(
		"`NOT_FOUND`: no such conversation, or the caller is not a member of it. The two answers are the same, so a conversation's existence never leaks.",
		{ notFound: errorExample(404, "NOT_FOUND", "Conversation not found") },
	),
};

export const componentHeaders: Record<string, Obj> = {
	FileLocation: {
		description: "The stored file's `url`.",
		schema: { type: "string", example: FILE_URL_EXAMPLE },
	},
	XTraceId: {
		description: "The request's trace id: the client's own `X-Trace-Id` if it sent a sane one (1–128 of `A-Z a-z 0-9 . _ : -`), else a new UUID. Also in the error envelope as `traceId`.",
		schema: { type: "string", example: "5f0c6a2e-8d3b-4c1e-9a57-2b6f1d9e0c42" },
	},
	RetryAfter: {
		description: "Seconds to wait before retrying (at least 1).",
		schema: { type: "integer", minimum: 1, example: 1 },
	},
	XNextCursor: {
		description: "The cursor of the next page: pass it back as `before`. Absent on the last page.",
		schema: { type: "string", example: "WyIyMDI0LTA3LTI1VDEwOjAwOjAwLjAwMFoiLCI2NmExZjBjMmU0YjBhMWIyYzNkNGU1ZjYiXQ" },
	},
	SetRefreshCookie: {
		description: "`refreshToken=<token>; Path=/auth; HttpOnly; SameSite=Lax; Max-Age=<refresh lifetime>` (plus `Secure` over HTTPS or in production). On logout the cookie is cleared with `Max-Age=0`.",
		schema: { type: "string", example: "refreshToken=k3Jd9sQ0vX1m7Zr2pL8aT5yW4bN6cE0f; Path=/auth; HttpOnly; SameSite=Lax; Max-Age=2592000" },
	},
};

export const parameters: Record<string, Obj> = {
	TraceId: {
		name: "X-Trace-Id",
		in: "header",
		required: false,
		description: "Optional client trace id, echoed in the `X-Trace-Id` response header and carried through every service call.",
		schema: { type: "string", pattern: "^[A-Za-z0-9._:-]{1,128}$" },
	},
	RefreshTokenCookie: {
		name: "refreshToken",
		in: "cookie",
		required: false,
		description: "The httpOnly refresh-token cookie set by register, login and refresh; used when the body has no `refreshToken`.",
		schema: { type: "string" },
	},
};

export const securitySchemes: Record<string, Obj> = {
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

// ---- Files: shared pieces of the upload and download operations ----

export const FILE_LOCATION: Obj = { Location: ref("headers", "FileLocation") };

/** A multipart/form-data request body with one file field (or an array of them). */
export function multipartBody(field: string, maxFiles: number): Obj {
	const binary: Obj = { type: "string", format: "binary" };
	const property: Obj =
		maxFiles === 1
			? { ...binary, description: "The file. Any other (text) fields are ignored." }
			: { type: "array", minItems: 1, maxItems: maxFiles, items: binary, description: `1 to ${maxFiles} files, the field repeated once per file. Any other (text) fields are ignored.` };
	return {
		required: true,
		content: { "multipart/form-data": { schema: { type: "object", required: [field], properties: { [field]: property } } } },
	};
}

/** The 400, 413 and 415 answers of a multipart upload; after any of them nothing of the request is kept. */
export function multipartUploadErrors(field: string, maxFiles: number): Obj {
	return {
		400: errorResponse(
			`\`VALIDATION_ERROR\`: no file in the field \`${field}\`, a file in another field, an empty file, or more than ${maxFiles} file(s). ` +
				"`BAD_REQUEST`: the multipart body is malformed (or the client went away mid-upload). Nothing of the request is kept.",
			{
				noFile: errorExample(400, "VALIDATION_ERROR", `No file in the field "${field}"`, [{ field, type: "required", message: "Missing file" }]),
				wrongField: errorExample(400, "VALIDATION_ERROR", `Send the file in the field "${field}"`, [{ field: "upload", type: "field", message: `Expected "${field}"` }]),
				emptyFile: errorExample(400, "VALIDATION_ERROR", "The file is empty", [{ field: "file", type: "required", message: "Empty file" }]),
				tooManyFiles: errorExample(400, "VALIDATION_ERROR", `At most ${maxFiles} file(s)`, [{ field, type: "arrayMax", message: `At most ${maxFiles}` }]),
				malformed: errorExample(400, "BAD_REQUEST", "Malformed upload: Unexpected end of multipart data"),
			},
		),
		413: errorResponse(
			`\`PAYLOAD_TOO_LARGE\`: a file is over the limit (${FILE_LIMIT_TEXT}), the whole request is over ${maxFiles === 1 ? "that limit" : `${maxFiles} times that limit`} plus 1 MiB, or it would take the caller over its storage quota (\`details: { quota, used }\`). Nothing of the request is kept.`,
			{
				fileTooLarge: errorExample(413, "PAYLOAD_TOO_LARGE", "A file may be at most 26214400 bytes"),
				requestTooLarge: errorExample(413, "PAYLOAD_TOO_LARGE", "The upload is too large"),
				overQuota: errorExample(413, "PAYLOAD_TOO_LARGE", "Storage quota exceeded: 1.0 GiB of 1.0 GiB used; delete files to upload more", { quota: 1073741824, used: 1073741000 }),
			},
		),
		415: errorResponse(
			"`UNSUPPORTED_MEDIA_TYPE`: a file's content is not of an accepted type (see the Files tag; SVG and HTML never are), whatever its name or claimed type; " +
				"or the request is not `multipart/form-data`. Nothing of the request is kept.",
			{
				unsupported: errorExample(415, "UNSUPPORTED_MEDIA_TYPE", "This type of file is not accepted"),
				notMultipart: errorExample(415, "UNSUPPORTED_MEDIA_TYPE", "Send multipart/form-data"),
			},
		),
	};
}

/** The params of a base64 upload (POST /upload/file-base64 and POST /users/upload-avatar), described. */
export const BASE64_UPLOAD_PARAMS: Record<string, string> = {
	fileName: "The file's name, for display (cleaned as `File.fileName`).",
	mimeType: "Optional and not trusted: the type is decided from the decoded bytes.",
	base64:
		"The file's bytes in base64 (the standard or the URL-safe alphabet; whitespace is ignored). A `data:<type>;base64,` prefix (a data: URL) is accepted and dropped. " +
		`Decoded, at most the file limit (${FILE_LIMIT_TEXT}); the whole JSON body may be up to 35 MiB.`,
};

/** The 400 and 413 answers of a base64 upload (POST /upload/file-base64 and POST /users/upload-avatar). */
export const BASE64_UPLOAD_ERRORS: Obj = {
	400: errorResponse(
		"`VALIDATION_ERROR`: a missing or bad field, `base64` that is not base64, or an empty file. " +
			"`BAD_REQUEST`: malformed JSON. Nothing is kept.",
		{
			notBase64: errorExample(400, "VALIDATION_ERROR", "base64 is not valid base64", [{ field: "base64", type: "base64", message: "Not base64" }]),
			emptyFile: errorExample(400, "VALIDATION_ERROR", "The file is empty", [{ field: "file", type: "required", message: "Empty file" }]),
			missingField: errorExample(400, "VALIDATION_ERROR", "Parameters validation error", [{ field: "fileName", type: "required", message: "The 'fileName' field is required." }]),
			badJson: errorExample(400, "BAD_REQUEST", "Malformed JSON body"),
		},
	),
	413: errorResponse(`\`PAYLOAD_TOO_LARGE\`: the JSON body is over 35 MiB, the decoded file is over the limit (${FILE_LIMIT_TEXT}), or it would take the caller over its storage quota (\`details: { quota, used }\`). Nothing is kept.`, {
		bodyTooLarge: errorExample(413, "PAYLOAD_TOO_LARGE", "Request body too large"),
		fileTooLarge: errorExample(413, "PAYLOAD_TOO_LARGE", "A file may be at most 26214400 bytes"),
		overQuota: errorExample(413, "PAYLOAD_TOO_LARGE", "Storage quota exceeded: 1.0 GiB of 1.0 GiB used; delete files to upload more", { quota: 1073741824, used: 1073741000 }),
	}),
};

/** The Range request header GET /files/{fileId} understands. */
export const RANGE_HEADER: Obj = {
	name: "Range",
	in: "header",
	required: false,
	description:
		"One byte range: `bytes=<first>-<last>`, `bytes=<first>-` (to the end) or `bytes=-<n>` (the last n bytes); a `<last>` past the end is cut to the end. " +
		"Any other form (several ranges, other units) is ignored and the whole file is sent.",
	schema: { type: "string", maxLength: 100, example: "bytes=0-1023" },
};

/** The headers of a served file (200 and 206). Its `Content-Type` is the stored `mimetype`. */
export const FILE_HEADERS: Obj = {
	"Content-Length": { description: "Bytes in this answer: the whole file, or the range.", schema: { type: "integer", minimum: 1, example: 48213 } },
	"Content-Disposition": {
		description: "`inline` for images, video and audio, `attachment` for documents; with the file's name (`filename` in ASCII, `filename*` in UTF-8).",
		schema: { type: "string", example: "inline; filename=\"holiday.png\"; filename*=UTF-8''holiday.png" },
	},
	"X-Content-Type-Options": { description: "Browsers must not guess another type than the stored one.", schema: { type: "string", enum: ["nosniff"] } },
	"Accept-Ranges": { description: "Range requests are supported.", schema: { type: "string", enum: ["bytes"] } },
	"Cache-Control": { description: "A file never changes under its id.", schema: { type: "string", example: "private, max-age=31536000, immutable" } },
	"Content-Security-Policy": {
		description: "Even if a browser rendered the file as a page, it could run nothing.",
		schema: { type: "string", example: "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox" },
	},
};

/** The bytes of a served file, of whatever type was stored. */
export const FILE_BYTES: Obj = { "*/*": { schema: { type: "string", format: "binary" } } };



export const DESCRIPTION = `REST API of Parley, a self-hostable chat backend. Every route is reached through the API gateway.

## Authentication

Register or log in under \`/auth\` to get an **access token** (a JWT, valid **15 minutes** by default) and a **refresh token**.
Send the access token on every other route (except \`GET /files/{fileId}\`, see Files) as \`Authorization: Bearer <accessToken>\`; a missing, malformed or expired token,
or one whose login has ended (logout, a password or role change, a deleted account), is \`401 UNAUTHORIZED\`, answered before the request body is read.
The refresh token is also set as an httpOnly cookie \`refreshToken\` (path \`/auth\`); a client that sends \`X-Refresh-Transport: cookie\` gets it in the cookie only,
not in the body. \`POST /auth/refresh\` spends it and returns a new pair (rotation); presenting a spent refresh token again revokes that whole login.
\`POST /auth/logout\` revokes it (or, without one, the login of the bearer token sent along) and clears the cookie.

## Errors

Every error is JSON: \`{ statusCode, code, message, traceId, details? }\` with \`code\` one of ${ERROR_CODES.map(c => `\`${c}\``).join(", ")}.
Status codes follow their HTTP meaning (400, 401, 403, 404, 409, 413, 415, 429, 503; a 500 never carries a stack trace).
\`VALIDATION_ERROR\` lists the failed fields in \`details\`. Wrong login credentials are \`400 INVALID_CREDENTIALS\`.
JSON bodies are limited to 1 MiB (413), except on the base64 uploads \`POST /upload/file-base64\` and \`POST /users/upload-avatar\` (35 MiB; a node reads a few
at a time: more are \`503\` with \`Retry-After\`, more than two of one user \`429\`).

## Files

Upload with \`POST /upload/single\` or \`POST /upload/multiple\` (multipart) or \`POST /upload/file-base64\` (JSON); each answers the stored
\`File\`, whose \`url\` (\`/files/<fileId>\`) goes into a message's \`attachments\` or an avatar. \`GET /files/{fileId}\` needs no token, so
\`<img src>\` works: the random 32-hex-character id is the capability. A file may be at most ${FILE_LIMIT_TEXT}, or it is 413; its type is decided
from its content against an allow-list (415; never SVG or HTML). Each user may keep \`FILE_QUOTA_BYTES\` of files (1 GiB by default; 413 over it).
An upload that is refused, fails or is interrupted keeps nothing. A file is deleted when the last message, profile or group using it lets go of it.

## Rate limits

Requests over a limit get \`429 RATE_LIMITED\` with a \`Retry-After\` header (seconds). Routes with a token are limited per user
(\`RATE_LIMIT\`, 20 requests/s by default); the \`/auth\` routes per client address (\`RATE_LIMIT_AUTH\`, 10 requests/s by default);
repeated failed logins for one account are slowed down separately.

## Paging

Lists are JSON arrays, newest first unless stated, paged by \`limit\` (default 50, at most 100) and a cursor. For messages the cursor is
the \`seq\` number (\`before=41\` gives the page below 41, \`after=41\` what came after it, oldest first); for conversation and notification
lists it is the opaque \`X-Next-Cursor\` response header, passed back as \`before\` (the header is absent on the last page).

## CORS

Browsers on another origin are served only if their \`Origin\` is one of \`CORS_ORIGINS\` (compared exactly); any other \`Origin\`
gets \`403 FORBIDDEN\` on every route, before the route runs. The web client served by the gateway itself is same-origin.

## Tracing

Every response carries an \`X-Trace-Id\` header: the client's own \`X-Trace-Id\` if it sent one, else a new id. Errors repeat it as \`traceId\`.

## Real time (Socket.IO)

Live events go over Socket.IO on this same origin (default path \`/socket.io\`; the websocket transport alone works), in two namespaces:

- \`/chat\`: conversations, messages, typing, read receipts, blocks; also client → server commands that mirror the routes here
  (\`conversation:create\`, \`message:send\`, …).
- \`/notifications\`: the user's notifications and their unread count. Client → server: \`notification:list\`, \`notification:get\`,
  \`notification:read\`, \`notification:delete\`, \`notification:read-all\`, \`notification:ping\` (all with acks, mirroring the routes under
  \`/notifications\`). The server pushes \`notification:created\`, \`notification:read\`, \`notification:deleted\` and \`notification:count\`
  (\`{ count }\`, the unread count) to all of the user's devices on every change, and \`notification:count\` on connect.

Connect with the access token: \`io(origin + "/chat", { auth: { token } })\` (the raw JWT or \`"Bearer <jwt>"\`); a socket without a valid
token is refused at connect (\`connect_error\` "Unauthorized"). Every client → server event takes an ack callback and always gets
\`{ ok: true, data }\` or \`{ ok: false, error: { code, message, details? } }\` with the error codes above. Every event, in both directions, with its payload
and ack, is in the AsyncAPI document at [/docs/asyncapi.json](/docs/asyncapi.json), rendered at [/docs/asyncapi](/docs/asyncapi).`;

/** The OpenAPI document without its paths, which the actions declare. */
export const openApiFrame = {
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
		{
			name: "Conversations",
			description:
				"Private chats, message requests, groups, the caller's per-conversation settings and blocks. Bearer token required. " +
				"A conversation the caller is not a member of answers 404, exactly like one that does not exist.",
		},
		{ name: "Messages", description: "A conversation's messages. Bearer token required; non-members get 404." },
		{
			name: "Files",
			description:
				"Uploads (Bearer token required), serving (no token: the unguessable file id is the capability) and deletion (the uploader or an admin). " +
				`A file may be at most ${FILE_LIMIT_TEXT}. ${FILE_TYPES_TEXT} An upload that is refused, fails or is interrupted keeps nothing.`,
		},
		{
			name: "Notifications",
			description: "The caller's notifications (new messages, message requests, group invitations, admin broadcasts). Bearer token required; another user's notification answers 404.",
		},
	],
	components: {
		schemas,
		responses,
		headers: componentHeaders,
		parameters,
		securitySchemes,
	},
};
