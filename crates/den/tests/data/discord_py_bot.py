"""A stock discord.py bot pointed at den's Discord stand-in: the README's recipe.

It answers "!hello" with "hello, <name>" and prints "ready" once connected.
"""

import os

import discord
import yarl

# The two lines that point discord.py at the stand-in instead of discord.com.
discord.http.Route.BASE = os.environ["STANDIN_REST"]
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["STANDIN_GATEWAY"])

intents = discord.Intents.default()
intents.message_content = True
client = discord.Client(intents=intents)


@client.event
async def on_ready():
    print(f"ready as {client.user.name} in {len(client.guilds)} server(s)", flush=True)


@client.event
async def on_message(message):
    if message.author == client.user:
        return
    if message.content == "!hello":
        await message.reply(f"hello, {message.author.name}")


client.run(os.environ.get("STANDIN_TOKEN", "any-token-works"), log_handler=None)
