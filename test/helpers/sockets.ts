/** socket.io-client helpers: connect as a user, emit with an ack, record and await events. */
import { io, type Socket } from "socket.io-client";
import type { ChatServerToClientEvents, NotificationServerToClientEvents } from "../../lib/socket-events";
import { checkServerEvent, checkSocketAck } from "./api-contract";

export interface Ack<T = any> {
	ok: boolean;
	data?: T;
	error?: { code: string; message: string; details?: unknown };
}

/** What a test client may hear: the server's events of both namespaces, typed (lib/socket-events.ts). */
export type ServerToClientEvents = ChatServerToClientEvents & NotificationServerToClientEvents;

/**
 * What a test client may send: any event name (the tests also send made-up ones on purpose); each
 * ack is checked against the AsyncAPI document instead (emitAck).
 */
export type ClientToServerEvents = Record<string, (...args: any[]) => void>;

export interface TestSocket extends Socket<ServerToClientEvents, ClientToServerEvents> {
	received: { event: string; payload: any }[];
}

export function connectSocket(baseUrl: string, token: string, nsp = "/chat"): Promise<TestSocket> {
	return new Promise((resolve, reject) => {
		const socket = io(baseUrl + nsp, { auth: { token }, transports: ["websocket"], reconnection: false, forceNew: true }) as TestSocket;
		socket.received = [];
		socket.onAny((event: string, payload: unknown) => {
			// Every event is checked against the AsyncAPI document (a mismatch fails the test file).
			checkServerEvent(nsp, event, payload);
			socket.received.push({ event, payload });
		});
		const timer = setTimeout(() => reject(new Error("connect timeout")), 10_000);
		socket.once("connect", () => {
			clearTimeout(timer);
			resolve(socket);
		});
		socket.once("connect_error", err => {
			clearTimeout(timer);
			reject(err);
		});
	});
}

export function emitAck<T = any>(socket: Socket, event: string, payload?: unknown, timeoutMs = 10_000): Promise<Ack<T>> {
	return new Promise((resolve, reject) => {
		const timer = setTimeout(() => reject(new Error(`no ack for ${event}`)), timeoutMs);
		const done = (ack: Ack<T>) => {
			clearTimeout(timer);
			try {
				checkSocketAck((socket as unknown as { nsp: string }).nsp, event, ack);
			} catch (err) {
				return reject(err);
			}
			resolve(ack);
		};
		if (payload === undefined) socket.emit(event, done);
		else socket.emit(event, payload, done);
	});
}

/** Emit and insist on ok: true; returns data. */
export async function call<T = any>(socket: Socket, event: string, payload?: unknown): Promise<T> {
	const ack = await emitAck<T>(socket, event, payload);
	if (!ack.ok) throw new Error(`${event} failed: ${JSON.stringify(ack.error)}`);
	return ack.data as T;
}

/** Wait until the socket has received an event matching, counting from now or from all it has seen. */
export function waitForEvent(socket: TestSocket, event: string, match: (payload: any) => boolean = () => true, timeoutMs = 10_000): Promise<any> {
	const seen = socket.received.find(r => r.event === event && match(r.payload));
	if (seen) return Promise.resolve(seen.payload);
	return new Promise((resolve, reject) => {
		const timer = setTimeout(() => {
			socket.offAny(listener);
			reject(new Error(`timed out waiting for ${event}`));
		}, timeoutMs);
		const listener = (name: string, payload: unknown) => {
			if (name === event && match(payload)) {
				clearTimeout(timer);
				socket.offAny(listener);
				resolve(payload);
			}
		};
		socket.onAny(listener);
	});
}

export function countEvents(socket: TestSocket, event: string, match: (payload: any) => boolean = () => true): number {
	return socket.received.filter(r => r.event === event && match(r.payload)).length;
}

export const sleep = (ms: number) => new Promise(r => setTimeout(r, ms));
