/**
 * The OpenAPI 3.0.3 description of the gateway's REST routes, served at GET /docs/openapi.json
 * and rendered by Swagger UI at GET /docs. Hand-written: keep it in step with the aliases in
 * services/api.service.ts, the parameter rules in services/users.service.ts,
 * services/conversations.service.ts, services/messages.service.ts and
 * services/notifications.service.ts, services/files.service.ts (with the allow-list of
 * lib/file-types.ts), the shapes of lib/chat.ts (presentConversation, presentMessage) and of
 * presentNotification and presentFile.
 */
import { MAX_CONTENT, MAX_GROUP_SIZE } from "./chat";
import { ATTACHMENT_PATTERN, FILE_ID_SOURCE } from "./file-ids";
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
	415: "UnsupportedMediaType",
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

type Tag = "Health" | "Docs" | "Auth" | "Users" | "Roles" | "Conversations" | "Messages" | "Notifications" | "Files";

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
const conversationIdParam: Obj = ref("parameters", "ConversationId");
const notificationIdParam: Obj = ref("parameters", "NotificationId");

/** The opaque list cursor: the value of the previous page's X-Next-Cursor header. */
const cursorQuery: Obj = {
	name: "before",
	in: "query",
	required: false,
	description: "The `X-Next-Cursor` header of the previous page, passed back unchanged. Leave it out for the first page.",
	schema: { type: "string", maxLength: 200 },
};

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
const CONVERSATION_ID: Obj = { type: "string", minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9_-]+$", example: "66a1f0c2e4b0a1b2c3d4e5f6" };
const MESSAGE_ID: Obj = { type: "string", example: "66a1f3d9e4b0a1b2c3d4e601" };
const MESSAGE_TYPE: Obj = { type: "string", enum: ["text", "image", "file", "system"], example: "text" };
/** A user id in a request: an integer, or a numeric string. */
const USER_ID_INPUT: Obj = { oneOf: [{ type: "integer", minimum: 1 }, { type: "string", pattern: "^[0-9]+$" }], example: 7 };
const PARTICIPANTS: Obj = {
	type: "array",
	maxItems: MAX_GROUP_SIZE,
	items: USER_ID_INPUT,
	description: `The other users' ids (integers or numeric strings). A group has at most ${MAX_GROUP_SIZE} members, the creator included.`,
	example: [7],
};
const GROUP_NAME: Obj = { type: "string", nullable: true, maxLength: 100, description: "A group's name (trimmed).", example: "Book club" };
const NOTIFICATION_ID: Obj = { type: "string", minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9_-]+$", example: "66a1f4b7e4b0a1b2c3d4e610" };
/** Files: an upload's id is 16 random bytes in hex; it is the capability to read the file. */
const FILE_ID_EXAMPLE = "3f9a1c0d2b7e4f6a8c5d1e0b9a7f3c2d";
const FILE_URL_EXAMPLE = `/files/${FILE_ID_EXAMPLE}`;
const FILE_ID: Obj = { type: "string", pattern: `^${FILE_ID_SOURCE}$`, description: "32 lower-case hex characters, random and unguessable.", example: FILE_ID_EXAMPLE };
/** At most this many files in one POST /upload/multiple (services/api.service.ts). */
const MAX_UPLOAD_FILES = 10;
/** The size limits of uploads, as text (the numbers are configured in the environment). */
const FILE_LIMIT_TEXT = "25 MiB by default (`FILE_MAX_BYTES`)";
/** Every type lib/file-types.ts accepts, as it is stored and served. */
const FILE_MIME_TYPES = [
	"image/png",
	"image/jpeg",
	"image/gif",
	"image/webp",
	"video/mp4",
	"video/quicktime",
	"video/webm",
	"audio/mpeg",
	"audio/mp4",
	"audio/ogg",
	"audio/wav",
	"audio/flac",
	"audio/webm",
	"application/pdf",
	"application/vnd.openxmlformats-officedocument.wordprocessingml.document",
	"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
	"application/vnd.openxmlformats-officedocument.presentationml.presentation",
	"application/vnd.oasis.opendocument.text",
	"application/vnd.oasis.opendocument.spreadsheet",
	"application/vnd.oasis.opendocument.presentation",
	"application/msword",
	"application/vnd.ms-excel",
	"application/vnd.ms-powerpoint",
	"text/plain",
	"text/csv",
	"text/markdown",
	"application/zip",
	"application/gzip",
	"application/x-7z-compressed",
	"application/vnd.rar",
];
/** How the type of an upload is decided: the same text on every upload route. */
const FILE_TYPES_TEXT =
	"The type is decided from the file's content, never from the claimed type or the name " +
	"(the name only tells apart formats that share a container: `.docx`/`.xlsx`/`.pptx`/`.odt`/`.ods`/`.odp` in a ZIP, `.doc`/`.xls`/`.ppt`, `.csv`/`.md` text, `.weba` audio). " +
	"Accepted: images (PNG, JPEG, GIF, WebP), video (MP4, QuickTime, WebM), audio (MP3, MP4/M4A, Ogg, WAV, FLAC, WebM), PDF, " +
	"office documents (docx, xlsx, pptx, odt, ods, odp, doc, xls, ppt), plain text (UTF-8 text, CSV, Markdown) and archives (zip, gzip, 7z, rar). " +
	"SVG and HTML are never accepted, whatever they are called: served from this origin they could run script. Anything else is 415.";
const GROUP_AVATAR: Obj = {
	type: "string",
	nullable: true,
	maxLength: 2048,
	description: "A group's picture: `/files/<fileId>` of an image the caller uploaded (400 `VALIDATION_ERROR` otherwise, 403 for someone else's file).",
	example: FILE_URL_EXAMPLE,
};

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
			avatar_url: { type: "string", nullable: true, description: "`/files/<fileId>`: an image of this server.", example: FILE_URL_EXAMPLE },
			bio: { type: "string", nullable: true, maxLength: 500, example: "Coffee first." },
			status: { type: "string", enum: ["online", "offline"], description: "`online` while the user has at least one `/chat` socket open on any gateway node, `offline` otherwise.", example: "offline" },
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
				description: "`/files/<fileId>` of an image the caller uploaded (400 `VALIDATION_ERROR` otherwise, 403 for someone else's file); `null` (or an empty string) removes the avatar. A replaced avatar's file is deleted unless something else uses it.",
				example: FILE_URL_EXAMPLE,
			},
			bio: { type: "string", nullable: true, maxLength: 500, description: "`null` removes it.", example: "Coffee first." },
			currentPassword: {
				type: "string",
				format: "password",
				minLength: 1,
				maxLength: 200,
				description: "The caller's own current password: required to change `email` (400 `VALIDATION_ERROR` when missing, 400 `INVALID_CREDENTIALS` when wrong; counted like a failed login).",
			},
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
				description: "For `system` messages (group changes): what happened; `null` otherwise.",
				required: ["event", "userId", "actorId"],
				properties: {
					event: {
						type: "string",
						description:
							"`group_created`, `member_added`, `member_removed`, `member_left`, `admin_changed`, `moderator_promoted`, `moderator_demoted`, `renamed` or `avatar_changed`.",
						example: "member_added",
					},
					userId: { type: "integer", nullable: true, description: "The member it is about, if any.", example: 13 },
					actorId: { type: "integer", description: "Who did it.", example: 42 },
				},
				example: null,
			},
			created_at: TIMESTAMP,
			createdAt: { ...TIMESTAMP, description: "Alias of `created_at`." },
			updated_at: TIMESTAMP,
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
	UpdateConversationRequest: {
		type: "object",
		description: "Both optional; only the fields given change. An empty body changes nothing and returns the conversation.",
		properties: {
			name: { ...GROUP_NAME, description: "Trimmed; `null` or an empty string removes it." },
			avatar: { ...GROUP_AVATAR, description: "`/files/<fileId>` of an image the caller uploaded; `null` or an empty string removes it." },
		},
	},
	MuteRequest: {
		type: "object",
		required: ["muted"],
		properties: {
			muted: { type: "boolean", example: true },
			muteUntil: { ...TIMESTAMP, nullable: true, description: "With `muted: true`: when the mute ends by itself. Left out or `null`: until unmuted." },
		},
	},
	PinRequest: {
		type: "object",
		required: ["pinned"],
		properties: { pinned: { type: "boolean", example: true } },
	},
	HideRequest: {
		type: "object",
		required: ["hidden"],
		properties: { hidden: { type: "boolean", description: "A hidden conversation comes back with its next message.", example: true } },
	},
	SetNicknameRequest: {
		type: "object",
		required: ["targetUserId", "nickname"],
		properties: {
			targetUserId: { ...USER_ID_INPUT, description: "A member of the conversation (an integer or a numeric string)." },
			nickname: { type: "string", nullable: true, maxLength: 50, description: "Trimmed; `null` or an empty string removes the nickname.", example: "Bobby" },
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
				enum: ["message", "message_request", "group_invite", "system"],
				description:
					"`message`: a new message in one of the caller's chats; `message_request`: someone started a private chat with the caller; " +
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
	BroadcastRequest: {
		type: "object",
		required: ["title", "content"],
		properties: {
			title: { type: "string", minLength: 1, maxLength: 200, description: "Trimmed.", example: "Maintenance tonight" },
			content: { type: "string", minLength: 1, maxLength: 2000, description: "Trimmed.", example: "Parley will be down from 02:00 to 02:15 UTC." },
			userIds: {
				type: "array",
				minItems: 1,
				maxItems: 10000,
				items: { type: "integer", minimum: 1 },
				description: "The recipients (numeric strings are accepted too; duplicates count once). Left out: every user.",
				example: [42, 7],
			},
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
	SendMessageRequest: {
		type: "object",
		description: "`content` or at least one attachment. A message whose first attachment is an image has `type: \"image\"`, one with other attachments `\"file\"`, else `\"text\"`.",
		properties: {
			content: { type: "string", maxLength: MAX_CONTENT, description: "Trimmed.", example: "See you at eight." },
			attachments: {
				type: "array",
				maxItems: 10,
				items: {
					type: "string",
					maxLength: 2048,
					pattern: ATTACHMENT_PATTERN.source,
					description: "A file uploaded to this server: its id, `/files/<id>`, or its full URL.",
				},
				example: [FILE_URL_EXAMPLE],
			},
			clientId: {
				type: "string",
				minLength: 1,
				maxLength: 100,
				description: "The client's own id for this message. Sending again with a clientId this sender already used in this conversation returns the first message and notifies nobody again.",
				example: "c-1718000000000-1",
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
			mimetype: { type: "string", enum: FILE_MIME_TYPES, description: "Decided from the content (see the Files tag); served as the file's `Content-Type`.", example: "image/png" },
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

const RETRY_AFTER: Obj = { "Retry-After": ref("headers", "RetryAfter") };
const SET_REFRESH_COOKIE: Obj = { "Set-Cookie": ref("headers", "SetRefreshCookie") };
const NEXT_CURSOR: Obj = { "X-Next-Cursor": ref("headers", "XNextCursor") };

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

const componentHeaders: Record<string, Obj> = {
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

const parameters: Record<string, Obj> = {
	FileId: {
		name: "fileId",
		in: "path",
		required: true,
		description: "The file's id, as in its `url`. Anything that is not 32 lower-case hex characters answers 404, like an unknown id.",
		schema: FILE_ID,
	},
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
	ConversationId: {
		name: "conversationId",
		in: "path",
		required: true,
		description: "The conversation's id. A conversation the caller is not a member of answers 404, like one that does not exist.",
		schema: CONVERSATION_ID,
	},
	NotificationId: {
		name: "notificationId",
		in: "path",
		required: true,
		description: "The notification's id. Another user's notification answers 404, like one that does not exist.",
		schema: NOTIFICATION_ID,
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

// ---- Files: shared pieces of the upload and download operations ----

const FILE_LOCATION: Obj = { Location: ref("headers", "FileLocation") };

/** A multipart/form-data request body with one file field (or an array of them). */
function multipartBody(field: string, maxFiles: number): Obj {
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
function multipartUploadErrors(field: string, maxFiles: number): Obj {
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

/** The 400 and 413 answers of a base64 upload (POST /upload/file-base64 and POST /users/upload-avatar). */
const BASE64_UPLOAD_ERRORS: Obj = {
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
const RANGE_HEADER: Obj = {
	name: "Range",
	in: "header",
	required: false,
	description:
		"One byte range: `bytes=<first>-<last>`, `bytes=<first>-` (to the end) or `bytes=-<n>` (the last n bytes); a `<last>` past the end is cut to the end. " +
		"Any other form (several ranges, other units) is ignored and the whole file is sent.",
	schema: { type: "string", maxLength: 100, example: "bytes=0-1023" },
};

/** The headers of a served file (200 and 206). Its `Content-Type` is the stored `mimetype`. */
const FILE_HEADERS: Obj = {
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
const FILE_BYTES: Obj = { "*/*": { schema: { type: "string", format: "binary" } } };

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
	"/docs/init.js": {
		get: operation({
			operationId: "getDocsPageScript",
			tag: "Docs",
			summary: "The script that starts Swagger UI on the /docs page (no inline script, for the Content-Security-Policy)",
			responses: {
				200: { description: "JavaScript.", headers: headers(), content: { "text/javascript": { schema: { type: "string" } } } },
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
			summary: "Find users by username prefix, or by a whole email address",
			description:
				"Case-insensitive prefix match on the username; an email matches only when `q` is the whole address (admins: by prefix). " +
				"An exact match comes first, then shorter usernames. Another user's email is never shown.",
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
	"/users/upload-avatar": {
		post: operation({
			operationId: "uploadAvatar",
			tag: "Users",
			summary: "Upload the caller's avatar (base64 JSON)",
			description:
				"The same body and limits as POST /upload/file-base64 (a `data:` URL prefix is accepted; the JSON body may be up to 35 MiB), but only images are accepted: " +
				"PNG, JPEG, GIF or WebP, decided from the content. The image is stored as a file and its `url` becomes the caller's `avatar_url`. " +
				"The previous avatar's file is not deleted.",
			bearer: true,
			requestBody: body(schema("Base64UploadRequest")),
			responses: {
				200: ok("The avatar is set.", schema("AvatarUploadResult")),
				...BASE64_UPLOAD_ERRORS,
				415: errorResponse("`UNSUPPORTED_MEDIA_TYPE`: the file is not a PNG, JPEG, GIF or WebP image (decided from its content, whatever its name or claimed type). Nothing is kept.", {
					notImage: errorExample(415, "UNSUPPORTED_MEDIA_TYPE", "Only images are accepted here"),
				}),
			},
		}),
	},
	"/users": {
		get: operation({
			operationId: "listUsers",
			tag: "Users",
			summary: "List users, a page at a time",
			description: "Newest first. `search` matches, case-insensitively, a prefix of the username, or a whole email address (admins: an email prefix).",
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

	"/blocks": {
		get: operation({
			operationId: "listBlocks",
			tag: "Conversations",
			summary: "The users the caller blocked",
			description: "Newest block first. Block and unblock over the `/chat` socket (`user:block`, `user:unblock`).",
			bearer: true,
			responses: {
				200: ok("The caller's blocks.", arrayOf(schema("Block"))),
			},
		}),
	},

	"/upload/single": {
		post: operation({
			operationId: "uploadFile",
			tag: "Files",
			summary: "Upload one file (multipart)",
			description:
				"`multipart/form-data` with the file in the field `file`. The file is streamed to storage as it arrives and may be at most " +
				`${FILE_LIMIT_TEXT}. ${FILE_TYPES_TEXT} ` +
				"All or nothing: an upload that is refused, fails or is interrupted keeps nothing.",
			bearer: true,
			requestBody: multipartBody("file", 1),
			responses: {
				201: ok("Stored.", schema("File")),
				...multipartUploadErrors("file", 1),
			},
		}),
	},
	"/upload/multiple": {
		post: operation({
			operationId: "uploadFiles",
			tag: "Files",
			summary: `Upload up to ${MAX_UPLOAD_FILES} files (multipart)`,
			description:
				`\`multipart/form-data\` with 1 to ${MAX_UPLOAD_FILES} files, each in a field \`files\`. Every file is checked as in POST /upload/single ` +
				`(at most ${FILE_LIMIT_TEXT}; its type decided from its content). ` +
				"All or nothing: if any file is refused, or the upload fails or is interrupted, none of the request's files is kept.",
			bearer: true,
			requestBody: multipartBody("files", MAX_UPLOAD_FILES),
			responses: {
				201: ok("All the files are stored.", schema("FileList")),
				...multipartUploadErrors("files", MAX_UPLOAD_FILES),
			},
		}),
	},
	"/upload/file-base64": {
		post: operation({
			operationId: "uploadFileBase64",
			tag: "Files",
			summary: "Upload one file as base64 (JSON)",
			description:
				"For clients that cannot send multipart. `base64` may be a `data:` URL; `mimeType` is not trusted (the type is decided from the decoded bytes, as for POST /upload/single). " +
				`The decoded file may be at most ${FILE_LIMIT_TEXT}; the JSON body up to 35 MiB. A refused upload keeps nothing.`,
			bearer: true,
			requestBody: body(schema("Base64UploadRequest")),
			responses: {
				201: ok("Stored; `Location` is the file's `url`.", schema("File"), FILE_LOCATION),
				...BASE64_UPLOAD_ERRORS,
				...errors(415),
			},
		}),
	},
	"/upload": {
		delete: operation({
			operationId: "deleteFile",
			tag: "Files",
			summary: "Delete an uploaded file (its uploader or an admin)",
			description:
				"Only the user who uploaded the file, or an admin, may delete it. It stops being served at once (GET /files/{fileId} answers 404); " +
				"messages and avatars that point to it keep the dead link.",
			bearer: true,
			requestBody: body(schema("DeleteFileRequest")),
			responses: {
				204: noContent("Deleted."),
				400: errorResponse("`VALIDATION_ERROR`: neither `fileId` nor `fileUrl` is given, or one is too long.", {
					missing: errorExample(400, "VALIDATION_ERROR", "Give fileId or fileUrl", [{ field: "fileId", type: "required", message: "fileId or fileUrl" }]),
				}),
				403: errorResponse("`FORBIDDEN`: the caller is neither the file's uploader nor an admin.", {
					notOwner: errorExample(403, "FORBIDDEN", "Only the uploader or an admin deletes a file"),
				}),
				404: errorResponse("`NOT_FOUND`: no such file, or `fileId` / `fileUrl` does not name a file of this server.", {
					notFound: errorExample(404, "NOT_FOUND", "File not found"),
				}),
				...errors(413),
			},
		}),
	},
	"/files/{fileId}": {
		get: operation({
			operationId: "downloadFile",
			tag: "Files",
			summary: "A file's bytes (no token)",
			description:
				"Needs no token, so `<img src>`, `<video src>` and links work: the unguessable id is the capability (share a file's `url` only with whom may read it). " +
				"Answers the bytes with the stored `mimetype` as `Content-Type`; images, video and audio are `inline`, everything else an `attachment`. " +
				"One byte range may be asked with `Range` (206); a range that starts past the end is 416. Not rate-limited.",
			parameters: [ref("parameters", "FileId"), RANGE_HEADER],
			responses: {
				200: { description: "The whole file, with the stored `mimetype` as `Content-Type`.", headers: headers(FILE_HEADERS), content: FILE_BYTES },
				206: {
					description: "The asked range of the file (a `Range` request).",
					headers: headers({
						...FILE_HEADERS,
						"Content-Range": { description: "`bytes <first>-<last>/<size>`.", schema: { type: "string", example: "bytes 0-1023/48213" } },
					}),
					content: FILE_BYTES,
				},
				400: errorResponse("`VALIDATION_ERROR`: `fileId` is longer than 64 characters.", {
					tooLong: errorExample(400, "VALIDATION_ERROR", "Parameters validation error", [
						{ field: "fileId", type: "stringMax", message: "The 'fileId' field length must be less than or equal to 64 characters long.", expected: 64 },
					]),
				}),
				404: ref("responses", "FileNotFound"),
				416: {
					description: "The range cannot be satisfied (it starts past the end of the file). No body.",
					headers: headers({ "Content-Range": { description: "`bytes */<size>`: the file's size.", schema: { type: "string", example: "bytes */48213" } } }),
				},
				...errors(503),
			},
		}),
	},

	"/conversations": {
		get: operation({
			operationId: "listConversations",
			tag: "Conversations",
			summary: "The caller's conversations, by last activity",
			description:
				"Newest activity first, a page at a time: while there is more, the answer has an `X-Next-Cursor` header to pass back as `before`. " +
				"Message requests addressed to the caller (pending, or declined by it) are not listed here but under /conversations/requests; " +
				"conversations the caller hid are left out until a new message arrives.",
			bearer: true,
			parameters: [intQuery("limit", "At most this many conversations.", 1, 100, 50), cursorQuery],
			responses: {
				200: ok("One page of conversations.", arrayOf(schema("Conversation")), NEXT_CURSOR),
				...errors(400),
			},
		}),
		post: operation({
			operationId: "createConversation",
			tag: "Conversations",
			summary: "Start a private chat or create a group",
			description:
				"A new private chat starts `pending` (a message request): the caller, its initiator, may send; the other user must accept before replying. " +
				"A private chat between two users exists once: asking for it again answers the existing one (200) and unhides it for the caller. " +
				"A group starts `accepted` with the caller as its admin, and gets a `group_created` system message. " +
				"Every participant, the creator included, gets `conversation:created` on the `/chat` socket.",
			bearer: true,
			requestBody: body(schema("CreateConversationRequest")),
			responses: {
				201: ok("Created.", schema("Conversation")),
				200: ok("The private chat between the two users already existed; here it is.", schema("Conversation")),
				403: errorResponse("`FORBIDDEN`: one of the two users of a private chat blocked the other, or a group would include someone the caller blocked or who blocked it (`details` names each one).", {
					blocked: errorExample(403, "FORBIDDEN", "You cannot start a conversation with this user"),
					groupWithBlocked: errorExample(403, "FORBIDDEN", "You cannot start a group with a user you blocked or who blocked you", [{ field: "participants", type: "blocked", message: "User 12" }]),
				}),
				404: errorResponse("`NOT_FOUND`: a participant does not exist (`details` names each one).", {
					noSuchUser: errorExample(404, "NOT_FOUND", "User not found", [{ field: "participants", type: "notFound", message: "No user 99" }]),
				}),
				400: errorResponse("`VALIDATION_ERROR`: no participants, no one but the caller, more than one other user for a private chat, too many members, or a bad field.", {
					noOne: errorExample(400, "VALIDATION_ERROR", "A conversation needs someone else", [{ field: "participants", type: "arrayMin", message: "Give at least one other user" }]),
					privateOfThree: errorExample(400, "VALIDATION_ERROR", "A private conversation has exactly one other participant", [
						{ field: "participants", type: "arrayLength", message: "Exactly one other user" },
					]),
				}),
				...errors(413),
			},
		}),
	},
	"/conversations/requests": {
		get: operation({
			operationId: "listConversationRequests",
			tag: "Conversations",
			summary: "Pending message requests addressed to the caller",
			description: "Private chats someone else started with the caller that it has not accepted or declined yet, by last activity, newest first. Paged as GET /conversations.",
			bearer: true,
			parameters: [intQuery("limit", "At most this many conversations.", 1, 100, 50), cursorQuery],
			responses: {
				200: ok("One page of requests.", arrayOf(schema("Conversation")), NEXT_CURSOR),
				...errors(400),
			},
		}),
	},
	"/conversations/settings": {
		get: operation({
			operationId: "getConversationSettings",
			tag: "Conversations",
			summary: "The caller's settings of every conversation it belongs to",
			bearer: true,
			responses: {
				200: ok("Settings by conversation id.", {
					type: "object",
					additionalProperties: schema("ConversationSettings"),
					example: { "66a1f0c2e4b0a1b2c3d4e5f6": { muted: true, pinned: false, hidden: false, muteUntil: "2024-07-26T08:00:00.000Z" } },
				}),
			},
		}),
	},
	"/conversations/{conversationId}": {
		get: memberOperation({
			operationId: "getConversation",
			tag: "Conversations",
			summary: "One conversation",
			responses: {
				200: ok("The conversation.", schema("Conversation")),
			},
		}),
		patch: memberOperation({
			operationId: "updateConversation",
			tag: "Conversations",
			summary: "Rename a group or change its picture (group admin or moderator)",
			description: "Each change adds a system message (`renamed`, `avatar_changed`); every member gets `conversation:updated`.",
			requestBody: body(schema("UpdateConversationRequest")),
			responses: {
				200: ok("The updated conversation.", schema("Conversation")),
				403: errorResponse("`FORBIDDEN`: not a group, or the caller is neither its admin nor a moderator.", {
					notManager: errorExample(403, "FORBIDDEN", "Only the group admin or a moderator may do this"),
					notGroup: errorExample(403, "FORBIDDEN", "Only groups have admins and moderators"),
				}),
				...errors(413),
			},
		}),
		delete: memberOperation({
			operationId: "deleteConversation",
			tag: "Conversations",
			summary: "Delete a group (its admin) or hide a private chat (for the caller)",
			description:
				"A group: only its admin may delete it; it is gone with its messages for everyone, and every member gets `conversation:deleted`. " +
				"A private chat: it is hidden for the caller only (the caller's devices get `conversation:deleted`) and comes back with the next message.",
			responses: {
				204: noContent("Deleted (group) or hidden (private chat)."),
				403: errorResponse("`FORBIDDEN`: a group, and the caller is not its admin.", {
					notAdmin: errorExample(403, "FORBIDDEN", "Only the group admin deletes the group"),
				}),
			},
		}),
	},
	"/conversations/{conversationId}/accept": {
		post: memberOperation({
			operationId: "acceptConversation",
			tag: "Conversations",
			summary: "Accept a message request",
			description:
				"The addressee of a pending private chat accepts it (`status` becomes `accepted`); the initiator gets `request:accepted`. " +
				"Accepting a conversation that is already accepted, a group, or as the initiator changes nothing and returns it.",
			responses: {
				200: ok("The conversation.", schema("Conversation")),
			},
		}),
	},
	"/conversations/{conversationId}/decline": {
		post: memberOperation({
			operationId: "declineConversation",
			tag: "Conversations",
			summary: "Decline a message request",
			description:
				"The addressee of a pending private chat declines it (`status` becomes `declined`, after which nobody can send); the initiator gets `request:declined`. " +
				"Declining one that is already declined returns it unchanged.",
			responses: {
				200: ok("The conversation.", schema("Conversation")),
				403: errorResponse("`FORBIDDEN`: a group, or the caller is the request's initiator.", {
					notAddressee: errorExample(403, "FORBIDDEN", "Only the addressee of a message request can decline it"),
				}),
				409: errorResponse("`CONFLICT`: the conversation was already accepted.", {
					accepted: errorExample(409, "CONFLICT", "This conversation was already accepted"),
				}),
			},
		}),
	},
	"/conversations/{conversationId}/mute": {
		post: memberOperation({
			operationId: "muteConversation",
			tag: "Conversations",
			summary: "Mute or unmute a conversation (for the caller)",
			description: "While muted, the caller gets no notifications for its messages. `muteUntil` ends the mute by itself.",
			requestBody: body(schema("MuteRequest")),
			responses: {
				204: noContent("Saved."),
				...errors(413),
			},
		}),
	},
	"/conversations/{conversationId}/pin": {
		post: memberOperation({
			operationId: "pinConversation",
			tag: "Conversations",
			summary: "Pin or unpin a conversation (for the caller)",
			requestBody: body(schema("PinRequest")),
			responses: {
				204: noContent("Saved."),
				...errors(413),
			},
		}),
	},
	"/conversations/{conversationId}/hide": {
		post: memberOperation({
			operationId: "hideConversation",
			tag: "Conversations",
			summary: "Hide or unhide a conversation (for the caller)",
			description: "A hidden conversation is left out of GET /conversations until a new message arrives in it.",
			requestBody: body(schema("HideRequest")),
			responses: {
				204: noContent("Saved."),
				...errors(413),
			},
		}),
	},
	"/conversations/{conversationId}/read": {
		post: memberOperation({
			operationId: "markConversationRead",
			tag: "Conversations",
			summary: "Mark everything in a conversation read",
			description: "Moves the caller's read position to the newest message. If that message is someone else's, the members get `message:read` (and `message:status`).",
			responses: {
				200: ok("Nothing is unread now.", schema("MarkReadResult")),
			},
		}),
	},
	"/conversations/{conversationId}/nicknames": {
		get: memberOperation({
			operationId: "listNicknames",
			tag: "Conversations",
			summary: "The nicknames set in a conversation",
			responses: {
				200: ok("The nicknames.", arrayOf(schema("Nickname"))),
			},
		}),
		post: memberOperation({
			operationId: "setNickname",
			tag: "Conversations",
			summary: "Set or remove a member's nickname",
			description: "Any member may set the nickname of any member (itself included); every member sees it and gets `conversation:updated`.",
			requestBody: body(schema("SetNicknameRequest")),
			responses: {
				200: ok("All the nicknames of the conversation, after the change.", arrayOf(schema("Nickname"))),
				404: errorResponse("`NOT_FOUND`: no such conversation or the caller is not a member (the same answer), or `targetUserId` is not a member.", {
					conversation: errorExample(404, "NOT_FOUND", "Conversation not found"),
					member: errorExample(404, "NOT_FOUND", "Member not found"),
				}),
				...errors(413),
			},
		}),
	},
	"/conversations/{conversationId}/messages": {
		get: memberOperation({
			operationId: "listMessages",
			tag: "Messages",
			summary: "A conversation's messages, a page at a time",
			description:
				"Paged by `seq`. Without a cursor: the newest messages, newest first. `before=41`: the page below seq 41, newest first. " +
				"`after=41`: what came after seq 41, oldest first (to catch up after a gap). Not both. " +
				"Messages before the caller cleared its history are not shown; deleted messages appear as tombstones.",
			parameters: [
				intQuery("limit", "At most this many messages.", 1, 100, 50),
				{ name: "before", in: "query", required: false, description: "Messages with a smaller `seq`, newest first.", schema: { type: "integer", minimum: 1 } },
				{ name: "after", in: "query", required: false, description: "Messages with a greater `seq`, oldest first. Not with `before`.", schema: { type: "integer", minimum: 0 } },
			],
			responses: {
				200: ok("One page of messages.", arrayOf(schema("Message"))),
			},
		}),
		post: memberOperation({
			operationId: "sendMessage",
			tag: "Messages",
			summary: "Send a message",
			description:
				"Every participant gets `message:created` on the `/chat` socket (except members of a group who blocked the sender). " +
				"A retry with the `clientId` of a send that went through answers the first message and sends nothing again. " +
				"In a pending message request only the initiator may send; in a declined one nobody may.",
			requestBody: body(schema("SendMessageRequest")),
			responses: {
				200: ok("The message (for a retry with a used `clientId`: the first one).", schema("Message")),
				403: errorResponse("`FORBIDDEN`: the caller may not send here now.", {
					pending: errorExample(403, "FORBIDDEN", "Accept the message request before replying"),
					declined: errorExample(403, "FORBIDDEN", "This message request was declined"),
					blocked: errorExample(403, "FORBIDDEN", "You cannot message this user"),
				}),
				...errors(413),
			},
		}),
		delete: memberOperation({
			operationId: "clearHistory",
			tag: "Messages",
			summary: "Clear a conversation's history for the caller",
			description: "The messages sent so far are no longer shown to the caller (nor found by search); the other members still see them.",
			responses: {
				204: noContent("Cleared for the caller."),
			},
		}),
	},

	"/notifications": {
		get: operation({
			operationId: "listNotifications",
			tag: "Notifications",
			summary: "The caller's notifications, newest first",
			description: "A page at a time: while there is more, the answer has an `X-Next-Cursor` header to pass back as `before`.",
			bearer: true,
			parameters: [
				{ name: "unreadOnly", in: "query", required: false, description: "`true`: only the unread ones.", schema: { type: "boolean", default: false } },
				intQuery("limit", "At most this many notifications.", 1, 100, 50),
				cursorQuery,
			],
			responses: {
				200: ok("One page of notifications.", arrayOf(schema("Notification")), NEXT_CURSOR),
				...errors(400),
			},
		}),
	},
	"/notifications/unread/count": {
		get: operation({
			operationId: "countUnreadNotifications",
			tag: "Notifications",
			summary: "How many of the caller's notifications are unread",
			description: "The `/notifications` socket also pushes this count (`notification:count`) on connect and after every change.",
			bearer: true,
			responses: {
				200: ok("The unread count.", schema("UnreadCount")),
			},
		}),
	},
	"/notifications/read-all": {
		patch: operation({
			operationId: "markAllNotificationsRead",
			tag: "Notifications",
			summary: "Mark all the caller's notifications read",
			description: "If any was unread, the caller's devices get `notification:count` on the `/notifications` socket.",
			bearer: true,
			responses: {
				200: ok("Nothing is unread now.", schema("ReadAllResult")),
			},
		}),
	},
	"/notifications/broadcast": {
		post: operation({
			operationId: "broadcastNotification",
			tag: "Notifications",
			summary: "Send a system notification to some or all users (admin only)",
			description:
				"Queues the broadcast and answers 202 at once. The notifications service then writes one `system` notification per user in paced batches, " +
				"so chat traffic keeps flowing; each recipient's devices get `notification:created` and `notification:count`. " +
				"Admin only: the token must carry the `admin` role, and the role is confirmed in the database.",
			bearer: true,
			requestBody: body(schema("BroadcastRequest")),
			responses: {
				202: ok("Queued.", schema("BroadcastResult")),
				403: errorResponse("`FORBIDDEN`: the caller is not an admin.", {
					role: errorExample(403, "FORBIDDEN", "Requires role admin"),
					notAdmin: errorExample(403, "FORBIDDEN", "Only an admin may broadcast"),
				}),
				...errors(400, 413),
			},
		}),
	},
	"/notifications/{notificationId}": {
		get: notificationOperation({
			operationId: "getNotification",
			summary: "One of the caller's notifications",
			responses: {
				200: ok("The notification.", schema("Notification")),
			},
		}),
		delete: notificationOperation({
			operationId: "deleteNotification",
			summary: "Delete one of the caller's notifications",
			description: "The caller's devices get `notification:deleted`, and `notification:count` if it was unread.",
			responses: {
				204: noContent("Deleted."),
			},
		}),
	},
	"/notifications/{notificationId}/read": {
		post: markNotificationReadOperation("markNotificationRead"),
		patch: markNotificationReadOperation("patchNotificationRead"),
	},
};

/**
 * An operation on one of the caller's notifications: Bearer, the notificationId path parameter,
 * 400 (a malformed id) and 404 for a notification that does not exist or is another user's.
 */
function notificationOperation(spec: Omit<OperationSpec, "bearer" | "tag">): Obj {
	return operation({
		...spec,
		tag: "Notifications",
		bearer: true,
		parameters: [notificationIdParam, ...(spec.parameters ?? [])],
		responses: { ...errors(400), 404: ref("responses", "NotificationNotFound"), ...spec.responses },
	});
}

/** POST and PATCH /notifications/{notificationId}/read are the same. */
function markNotificationReadOperation(operationId: string): Obj {
	return notificationOperation({
		operationId,
		summary: "Mark one of the caller's notifications read",
		description:
			"Both POST and PATCH do it. The caller's devices get `notification:read` and `notification:count` on the `/notifications` socket; " +
			"a notification already read is returned unchanged.",
		responses: {
			200: ok("The notification, read.", schema("Notification")),
		},
	});
}

/**
 * An operation on one conversation: Bearer, the conversationId path parameter, 400 (a malformed
 * id or body) and 404 for a conversation that does not exist or the caller is not a member of.
 */
function memberOperation(spec: Omit<OperationSpec, "bearer">): Obj {
	return operation({
		...spec,
		bearer: true,
		parameters: [conversationIdParam, ...(spec.parameters ?? [])],
		responses: { ...errors(400), 404: ref("responses", "ConversationNotFound"), ...spec.responses },
	});
}

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
\`{ ok: true, data }\` or \`{ ok: false, error: { code, message, details? } }\` with the error codes above. The events and their payloads are
listed, each with the action it calls, in the tables CHAT_EVENTS and NOTIFICATION_EVENTS of mixins/gateway-sockets.mixin.ts.`;

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
	paths,
	components: {
		schemas,
		responses,
		headers: componentHeaders,
		parameters,
		securitySchemes,
	},
};
