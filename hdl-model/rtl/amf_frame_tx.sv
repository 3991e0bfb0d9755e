// Link transmit stage: seals a frame with its CRC-32C (bytes 0..27, computed 4 bytes per cycle)
// in the crc field and presents it on the link port. The engine builds frames without a CRC.

module amf_frame_tx (
  input  logic         clk_i,
  input  logic         rst_ni,
  // frame from the engine (crc field ignored)
  input  logic         in_valid_i,
  output logic         in_ready_o,
  input  logic [255:0] in_frame_i,
  // link
  output logic         tx_valid_o,
  input  logic         tx_ready_i,
  output logic [255:0] tx_frame_o
);
  localparam int unsigned CrcWords = 7;

  typedef enum logic [1:0] {StIdle, StCrc, StSend} state_e;

  state_e       state_q, state_d;
  logic [223:0] head_q;   // bytes 0..27 as received
  logic [223:0] data_q, data_d;
  logic [2:0]   word_q, word_d;
  logic [31:0]  crc_q, crc_d;

  always_comb begin
    state_d = state_q;
    data_d  = data_q;
    word_d  = word_q;
    crc_d   = crc_q;
    unique case (state_q)
      StIdle: begin
        if (in_valid_i) begin
          state_d = StCrc;
          data_d  = in_frame_i[223:0];
          word_d  = '0;
          crc_d   = '1;
        end
      end
      StCrc: begin
        crc_d  = amf_crc_pkg::crc32c_word(crc_q, data_q[31:0]);
        data_d = data_q >> 32;
        word_d = word_q + 1'b1;
        if (word_q == 3'(CrcWords - 1)) state_d = StSend;
      end
      StSend: if (tx_ready_i) state_d = StIdle;
      default: state_d = StIdle;
    endcase
  end

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      state_q <= StIdle;
      head_q  <= '0;
      data_q  <= '0;
      word_q  <= '0;
      crc_q   <= '0;
    end else begin
      state_q <= state_d;
      data_q  <= data_d;
      word_q  <= word_d;
      crc_q   <= crc_d;
      if (state_q == StIdle && in_valid_i) head_q <= in_frame_i[223:0];
    end
  end

  assign in_ready_o = state_q == StIdle;
  assign tx_valid_o = state_q == StSend;
  assign tx_frame_o = {crc_q ^ 32'hffff_ffff, head_q};

  // The crc field of the input is replaced, never read.
  logic [31:0] unused_crc_in;
  assign unused_crc_in = in_frame_i[255:224];

endmodule
