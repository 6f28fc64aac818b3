/**
 * The user an action runs for: ctx.meta.user, set by the gateway from a verified token (or by
 * hand in the REPL, or passed on by another service). Checked, never trusted as it is.
 */
import type { Context } from "moleculer";
import { unauthorized } from "./errors";
import type { CallMeta } from "./meta";
import type { AuthUser } from "./tokens";

export function callerOf(ctx: Context<unknown, CallMeta>): AuthUser {
	const user = ctx.meta.user;
	const id = Number(user?.id);
	if (!user || !Number.isSafeInteger(id) || id <= 0) throw unauthorized();
	return { id, username: String(user.username ?? ""), roles: Array.isArray(user.roles) ? user.roles : [] };
}
