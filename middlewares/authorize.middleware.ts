/**
 * Who may call an action, enforced where the action runs, so the rule holds for every caller:
 * the gateway (REST and sockets), another service, the REPL. Each action declares it
 * (lib/api-declarations.ts), and the handler starts from a checked caller:
 *
 * - `auth` (the default of actions declared for clients: `openapi` or `socket`): ctx.meta.user must be a
 *   user (401 otherwise); the handler reads it with userOf(ctx).
 * - `roles: ["admin"]`: the token's roles must include one of them; "admin" is then read again
 *   from the database, so a demoted admin is no admin at once, whatever its token says.
 * - `owner: "id"`: params.id must be the caller's own id, or the caller an admin (403 otherwise).
 * - `member: "conversationId"`: the caller must be a member of that conversation; one it is not
 *   in answers 404, exactly like one that does not exist. The conversation and the membership
 *   are left in ctx.locals.member for the handler.
 *
 * It runs after the params are validated (user middlewares wrap inside Moleculer's validator),
 * and actions that declare none of these are not wrapped at all.
 */
import type { ActionHandler, ActionSchema, Context, Middleware } from "moleculer";
import { needsUser } from "../lib/api-declarations";
import type { ConversationMeta, MemberMeta } from "../lib/chat";
import { callAction } from "../lib/contracts";
import { forbidden, unauthorized } from "../lib/errors";
import type { CallMeta } from "../lib/meta";
import type { AuthUser } from "../lib/tokens";

/** What a member check leaves: the conversations service's own check gives the full documents. */
export interface MemberAccess {
	conv: ConversationMeta["conv"];
	membership: MemberMeta;
}

interface AuthorizedLocals {
	user?: AuthUser;
	member?: MemberAccess;
}

type Ctx = Context<Record<string, unknown>, CallMeta> & { locals: AuthorizedLocals };

/** ctx.meta.user, checked: a positive integer id, a username, a list of roles. */
function checkedUser(ctx: Ctx): AuthUser {
	const user = ctx.meta.user;
	const id = Number(user?.id);
	if (!user || !Number.isSafeInteger(id) || id <= 0) throw unauthorized();
	return { id, username: String(user.username ?? ""), roles: Array.isArray(user.roles) ? user.roles : [] };
}

/** The user an authorized action runs for (see `auth`). */
export function userOf(ctx: Context<unknown, CallMeta>): AuthUser {
	const locals = (ctx as unknown as { locals?: AuthorizedLocals }).locals;
	return locals?.user ?? checkedUser(ctx as Ctx);
}

/** The conversation and membership a `member` action was authorized for. */
export function memberOf<T = MemberAccess>(ctx: Context<unknown, CallMeta>): T {
	const member = (ctx as unknown as { locals?: AuthorizedLocals }).locals?.member;
	if (!member) throw new Error("memberOf() outside an action that declares `member`");
	return member as unknown as T;
}

/** A service that can check a membership itself (the conversations service reads its own store). */
interface MemberLoader {
	loadForMember(conversationId: string, userId: number): Promise<MemberAccess>;
}

export function AuthorizeMiddleware(): Middleware {
	return {
		localAction(next: ActionHandler, action: ActionSchema) {
			if (!needsUser(action)) return next;
			const { roles, owner, member } = action;
			const service = action.service as unknown as Partial<MemberLoader> | undefined;
			const loadsItself = typeof service?.loadForMember === "function";
			return async function authorized(ctx: Ctx) {
				const user = checkedUser(ctx);
				ctx.locals.user = user;
				if (roles && roles.length > 0) {
					if (!roles.some(role => user.roles.includes(role))) throw forbidden(`Requires role ${roles.join(" or ")}`);
					if (roles.length === 1 && roles[0] === "admin" && !(await callAction(ctx, "users.isAdmin", { userId: user.id }))) {
						throw forbidden("Requires role admin");
					}
				}
				if (owner && Number(ctx.params[owner]) !== user.id && !(await callAction(ctx, "users.isAdmin", { userId: user.id }))) {
					throw forbidden("Only the user itself or an admin may do this");
				}
				if (member) {
					const conversationId = String(ctx.params[member]);
					ctx.locals.member = loadsItself
						? await (service as MemberLoader).loadForMember(conversationId, user.id)
						: await callAction(ctx, "conversations.access", { conversationId, userId: user.id });
				}
				return next(ctx);
			};
		},
	};
}
