/**
 * What an action declares about how clients reach it, next to its `params` and its handler:
 *
 * - `rest`: its REST route(s), e.g. `"GET /conversations/:conversationId"`. The gateway builds its
 *   alias table from these declarations as it finds them in the service registry
 *   (mixins/gateway-routes.mixin.ts); `gatewayRoute` says which of its middleware chains the
 *   route goes through (default "rest": a Bearer token, the per-user rate limit, JSON up to 1 MiB).
 * - `socket`: its Socket.IO event, e.g. `{ namespace: "/chat", event: "message:send" }`.
 * - `openapi`: what the documents say about it (summary, answers by status); the request body,
 *   query and path parameters come from `params`. lib/api-documents.ts builds /docs/openapi.json
 *   and /docs/asyncapi.json from them.
 *   Only actions with an `openapi` block are routed: it is what makes an action part of the API.
 * - `auth`, `roles`, `owner`, `member`: who may call it, enforced for every caller (REST, socket or
 *   another service) by middlewares/authorize.middleware.ts.
 *
 * Adding a route or an event is adding these to the action (and a test): nothing else lists them.
 */
import type { Obj, Tag } from "./api-schemas";
import type { ROLES } from "./constants";

export type HttpMethod = "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
/** `"<METHOD> /path/:param"`, the path from the site's root. */
export type RestDeclaration = `${HttpMethod} /${string}`;

/**
 * The gateway's middleware chains for declared routes:
 * - "rest": Bearer token checked before the body is read, the per-user rate limit, JSON up to 1 MiB;
 * - "auth": no token, the per-address rate limit, JSON up to 1 MiB, the refresh-token cookie;
 * - "large-body": as "rest", with JSON up to 35 MiB read a few at a time (base64 uploads);
 * - "files": no token, no body (the file id is the capability), the Range header;
 * - "public": no token, no body (health, the API documents).
 */
export type GatewayRoute = "rest" | "auth" | "large-body" | "files" | "public";

export type SocketNamespace = "/chat" | "/notifications";

export interface SocketDeclaration {
	namespace: SocketNamespace;
	event: string;
	/** "data" (default): the ack is `{ ok: true, data: <result> }`; "none": `{ ok: true }`. */
	ack?: "data" | "none";
	/** After the action answers `{ room }`, the socket joins or leaves that room. */
	room?: "join" | "leave";
	/** The result is also emitted to the socket as this event. */
	reply?: string;
}

export interface OpenApiDeclaration {
	/** One per REST route, in the order of `rest`. */
	operationId?: string | string[];
	tag: Tag;
	summary: string;
	description?: string;
	/** Descriptions of the params, by name; their schemas come from `params`. */
	params?: Record<string, string>;
	/** Parameters `params` cannot say (a header, a cookie). */
	parameters?: Obj[];
	/** Replaces the request body made from `params` (e.g. an optional one). */
	requestBody?: Obj;
	/** The answers by status. The shared ones (400, 401, 404 of a member check, 413, 429, 503) are added. */
	responses?: Record<number, Obj>;
	/** The schema of the socket ack's `data`, when no 2xx answer above says it. */
	ack?: Obj;
}

export interface ApiActionDeclarations {
	rest?: RestDeclaration | RestDeclaration[];
	gatewayRoute?: GatewayRoute;
	socket?: SocketDeclaration;
	openapi?: OpenApiDeclaration;
	/**
	 * true: only for a caller with a user (ctx.meta.user, from a verified token); the default of
	 * actions declared for clients (`openapi`, `socket`). false: anyone (the route is public).
	 */
	auth?: boolean;
	/** The caller needs one of these roles; "admin" is read fresh from the database. */
	roles?: (typeof ROLES)[number][];
	/** The param naming a user id that must be the caller's own, unless the caller is an admin. */
	owner?: string;
	/** The param naming a conversation the caller must be a member of (404 otherwise); ctx.locals.member gets it. */
	member?: string;
}

declare module "moleculer" {
	// The declarations above, typed on every action schema (moleculer types `rest` itself). An
	// augmentation can only add to the interface through `extends`, hence the empty body.
	// eslint-disable-next-line @typescript-eslint/no-empty-object-type
	interface ActionSchema extends Omit<ApiActionDeclarations, "rest"> {}
}

/** An action as the registry describes it (local or from another node): its name, params and declarations. */
export interface DeclaredAction extends ApiActionDeclarations {
	name: string;
	params?: Record<string, unknown>;
	visibility?: string;
}

/** The REST routes of a declaration, parsed. */
export function restRoutesOf(action: Pick<DeclaredAction, "rest">): { method: HttpMethod; path: string }[] {
	const list = action.rest === undefined ? [] : Array.isArray(action.rest) ? action.rest : [action.rest];
	return list.map(decl => {
		const [method, path] = decl.split(/\s+/) as [HttpMethod, string];
		return { method, path };
	});
}

/**
 * Is this action declared for clients? Only with an `openapi` block: a `rest` alone (moleculer-web's
 * own listAliases has one) routes nothing.
 */
export function isClientAction(action: Pick<DeclaredAction, "openapi" | "visibility">): boolean {
	return !!action.openapi && (action.visibility === undefined || action.visibility === "published");
}

/** Does this action run only for a known user? */
export function needsUser(action: Pick<DeclaredAction, "auth" | "socket" | "roles" | "owner" | "member" | "openapi">): boolean {
	if (action.auth === false) return false;
	return action.auth === true || !!action.openapi || !!action.socket || !!action.roles || !!action.owner || !!action.member;
}
