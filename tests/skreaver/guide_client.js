// The JavaScript client sample of Skreaver's guide (seed 004, "Client Libraries"),
// verbatim. tests/skreaver.rs runs it with the URL replaced by the test server's.
const ws = new WebSocket('ws://localhost:8080/ws?token=abc123');

ws.onopen = () => {
  // Subscribe to channels
  ws.send(JSON.stringify({
    type: 'subscribe',
    data: { channels: ['agent-updates'] }
  }));
};

ws.onmessage = (event) => {
  const msg = JSON.parse(event.data);

  if (msg.type === 'ping') {
    ws.send(JSON.stringify({ type: 'pong' }));
  } else if (msg.type === 'event') {
    console.log('Event received:', msg.data);
  }
};

ws.onerror = (error) => {
  console.error('WebSocket error:', error);
};

ws.onclose = () => {
  console.log('WebSocket closed');
  // Implement reconnection logic
};
